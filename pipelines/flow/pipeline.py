"""The Prefect flow `sagan-pipeline`: prepare -> train -> evaluate -> register.

The flow validates params once and hands the validated `Params` to its tasks, in a `RunContext`
with the one DvcProject. Each task calls the one implementation of its stage (pipelines.stages) and
returns its typed result (pipelines.results). DVC is the cache of record (pipelines.flow.dvc_sync): a
stage that `dvc status` calls up to date is skipped, and a stage that ran is `dvc commit`ted.
Training is never restarted blindly: the train task resumes whenever the checkpoint was made from
the same data and params (sagan_core.train.resume), and resume is bit-exact.

One run per project at a time (pipelines.lock). Stage failures stop the flow with
`stage NAME failed: cause`; outputs of the stages before it are kept (and committed to DVC), so a
rerun continues from the failed stage. Each stage ends with one line: its name, outcome and duration
(pipelines.flow.console.stage_line).
"""

# No `from __future__ import annotations` here: a served or deployed run loads this file by path
# under a module name that is not kept in sys.modules, so pydantic (Prefect's parameter check)
# cannot resolve string annotations such as "FlowSettings" and every run failed before its first
# task. Real annotation objects need no lookup.
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

from pipelines import launch, stages
from pipelines.flow import kubernetes_train, notify
from pipelines.flow.console import StageLine, bounded, sagan_logs_to_prefect, stage_line
from pipelines.flow.dvc_sync import DvcProject, reads_params, without_dvc_note
from pipelines.flow.history import end_orphans, project_tag, tag_flow_run
from pipelines.flow.params_writeback import OverridesWritten, kept_if_done, undo_left_by_a_killed_run
from pipelines.flow.report import PrefectProgress, RunSummary, publish, stage_detail, summarize
from pipelines.flow.settings import FlowSettings, to_overrides
from pipelines.lock import project_lock, project_slot
from pipelines.project import version
from pipelines.results import Evaluated, NotRegistered, Prepared, Registered, Trained
from pipelines.tracking import store as tracking_store
from pipelines.tracking.run_record import end_left_running
from sagan_core.config import Params
from sagan_core.errors import SaganError
from sagan_core.params_file import load_params
from sagan_core.train import resume


class StageFailed(SaganError):
    """A stage raised; the message names the stage and the cause."""

    def __init__(self, stage: str, cause: BaseException):
        text = str(cause) if isinstance(cause, SaganError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"stage {stage} failed: {text}")
        self.stage = stage
        # Our own errors are deliberate and permanent (bad config, diverged training, missing
        # weights); anything else (network, I/O, server hiccups) may pass on a retry.
        self.transient = not isinstance(cause, SaganError)


def _retry_transient(task_, task_run, state) -> bool:
    return getattr(state.data, "transient", True)  # a failed task's state carries its exception


@contextlib.contextmanager
def _stage(name: str) -> Iterator[StageLine]:
    """A task's body: its failure as `stage NAME failed: cause`, its one line when it ends."""
    with stage_line(name, get_run_logger()) as line:
        try:
            yield line
        except StageFailed:
            raise
        except Exception as e:
            raise StageFailed(name, e) from e


@dataclass(frozen=True)
class RunContext:
    """What every task needs, built once per flow run."""

    params: Params
    force: bool
    dvc: DvcProject | None
    written: OverridesWritten | None = None  # the --set overrides this run wrote into params.yaml

    def must_run(self, line: StageLine) -> bool:
        """Whether the stage must run; when not, `line` says why (DVC finds it up to date)."""
        if self.force or self.dvc is None or self.dvc.changed(line.name):
            return True
        line.skipped = "dvc status: up to date"
        self._finished(line.name)
        return False

    def commit(self, stage: str) -> str:
        """`dvc commit` the stage; what the stage's line says about it ("" when DVC is not used).
        DVC's own "Updating lock file 'dvc.lock'" is not printed (pipelines/flow/dvc_sync.py)."""
        if self.dvc is None:
            return ""
        committed = self.dvc.commit(stage)
        self._finished(stage)
        return "recorded in dvc.lock" if committed else ""

    def _finished(self, stage: str) -> None:
        if self.written is not None:  # its overrides stay in params.yaml even if a later stage fails
            self.written.finished(stage)

    def dvc_stage(self, line: StageLine, compute, skipped):
        """Run a stage unless DVC says it is up to date (then read its recorded result); commit it."""
        if not self.must_run(line):
            return skipped(self.params)
        result = compute(self.params, progress=False)
        line.detail = stage_detail(result, self.commit(line.name))
        return result


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(run: RunContext) -> Prepared:
    with _stage("prepare") as line:
        # Before any `dvc status`: DVC's hashing of a data folder holding a FIFO or a link to
        # /dev/zero blocks forever (sagan_core/data/safe_folder.py). An `sagan init` project's
        # `check` stage is what `dvc repro` runs first; the flow does its work and records it.
        has_check = run.dvc is not None and "check" in run.dvc.stages
        stages.check_source(run.params, record=has_check)
        if has_check:
            run.commit("check")
        return run.dvc_stage(line, stages.prepare, skipped=stages.prepared)


@task(name="train", cache_policy=NO_CACHE)
def train_task(run: RunContext, data_hash: str) -> Trained:
    with _stage("train") as line:
        params = run.params
        if not run.must_run(line):
            return stages.trained(params)
        do_resume, why = resume.decide(params, data_hash, run.force)
        logger = get_run_logger()
        logger.info("train: %s", why)
        if params.train.launcher == "kubernetes":  # a Job of train.nnodes pods (docs/scale-out.md)
            result = kubernetes_train.train_on_cluster(params, do_resume, log=logger.info)
        elif launch.distributed(params):
            result = _train_under_torchrun(params, do_resume)
        else:
            progress = PrefectProgress(params.train.steps)
            result = stages.train(params, resume=do_resume, progress=False, callbacks=[progress])
        line.detail = stage_detail(result, run.commit("train"))
        return result


def _train_under_torchrun(params: Params, do_resume: bool) -> Trained:
    """train.nproc_per_node DDP processes; their output lines go to the Prefect log as they come."""
    start = resume.start_step(params.train.checkpoint) if do_resume else 0
    log = get_run_logger().info
    code, last = launch.run_torchrun(params, do_resume, quiet=True, log=log, forward=True)
    if code != 0:  # the CLI's own one-line message, when it printed one, is the cause
        cause = last.removeprefix("sagan: ").removeprefix("error: ")
        raise SaganError(cause if last.startswith("sagan: ") else f"torchrun exited with code {code}: {last}")
    return stages.trained(params, start_step=start)


# Each task takes the results it consumes as arguments: Prefect records them as the task run's
# inputs, and its UI draws the graph's edges from those inputs (prepare -> train -> evaluate ->
# register, and train -> register: register reads the checkpoint and the evaluation). The shared
# RunContext goes in `quote`d: Prefect matches arguments to earlier results by object identity, so
# walking its fields (paths, strings also held by a result) drew edges no data took.
@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(run: RunContext, trained: Trained) -> Evaluated:
    with _stage("evaluate") as line:
        which = run.params.registry.candidate  # best.pt or the last checkpoint (sagan_core.model.checkpoint)
        get_run_logger().info("evaluate: the %s checkpoint of training at step %d", which, trained.step)
        return run.dvc_stage(line, stages.evaluate, skipped=stages.evaluated)


def tracking_off(params: Params) -> str | None:
    """Why this run cannot be registered (tracking is off: no MLflow run holds its model), or None."""
    if tracking_store.enabled(params):
        return None
    if not params.registry.tracking:
        return "registry.tracking: false"
    return f"SAGAN_TRACKING={os.environ.get('SAGAN_TRACKING', '').strip()}"


@task(name="register", cache_policy=NO_CACHE)
def register_task(run: RunContext, trained: Trained, evaluated: Evaluated) -> Registered | NotRegistered:
    with _stage("register") as line:
        if why := tracking_off(run.params):
            line.skipped = f"tracking off: {why}"
            return NotRegistered(run.params.registry.model_name, f"tracking off: {why}")
        get_run_logger().info("register: FID %.4g at step %d", evaluated.fid, evaluated.generator_step)
        reg = stages.register(run.params)  # register is no DVC stage: nothing to commit
        line.detail = stage_detail(reg)
        return reg


@contextlib.contextmanager
def _in_dir(path: str | Path) -> Iterator[None]:
    """Stages use project-relative paths (as `sagan` and dvc.yaml do): run inside the project."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _context(params: Params, params_file: str, overrides: list[str], force: bool) -> RunContext:
    undo_left_by_a_killed_run()  # before anything reads params.yaml (flow/params_writeback.py)
    dvc = DvcProject.find(".", params.pipeline.dvc)
    if dvc is not None and not reads_params(params_file, params.pipeline.dvc):
        get_run_logger().warning("%s", without_dvc_note(params_file))
        dvc = None
    written = None
    if dvc is not None:
        if note := version.sync("."):
            get_run_logger().info("%s", note)
        written = OverridesWritten.write(params_file, overrides, params)
    return RunContext(params, force or params.pipeline.force, dvc, written)


def _end_left_running(params: Params, project: str) -> None:
    """Runs a killed process left RUNNING (this one holds the project now): Prefect's Crashed,
    MLflow's KILLED. Never fails the run: a tracking server that is down fails train in one line."""
    logger = get_run_logger()
    if ended := end_orphans(project):
        logger.info("flow runs left RUNNING by a killed process, marked Crashed: %s", ", ".join(ended))
    if tracking_off(params):
        return
    try:
        end_left_running(params)
    except Exception as e:  # noqa: BLE001 - any tracking failure is reported by the stages that need it
        logger.warning("could not check for MLflow runs left RUNNING: %s", str(e).splitlines()[0][:200])


@flow(
    name="sagan-pipeline",
    description="prepare -> train -> evaluate (FID/KID) -> register (MLflow)",
    on_completion=[notify.on_completion],
    on_failure=[notify.on_failure],
    on_crashed=[notify.on_crashed],
    on_cancellation=[notify.on_cancellation],
)
def sagan_pipeline(
    params_file: str = "params.yaml",
    settings: FlowSettings | None = None,
    overrides: list[str] | None = None,
    force: bool = False,
    project_dir: str = ".",
    params: Params | None = None,
) -> RunSummary:
    """Run the four stages on the project in `project_dir`.

    settings: typed params.yaml overrides (the Prefect UI's form); empty fields keep the file's values.
    overrides: `key.path=value` strings, exactly like `sagan ... --set`, applied after `settings`
    (both validated the same way as the file).
    force: run every stage even when nothing changed (also `pipeline.force`).
    params: the already validated params_file + overrides (the CLI passes them: validated once).
    """
    overrides = [*to_overrides(settings), *(overrides or [])]
    with sagan_logs_to_prefect(), _in_dir(project_dir):
        project = project_tag()  # on the flow run: the summary's past runs are this project's (history.py)
        tag_flow_run(project)
        params = params or load_params(params_file, overrides)
        cfg = params.pipeline
        if cfg.notify_block:  # where the hooks find it (notify.py)
            tag_flow_run(notify.TAG + cfg.notify_block)
        if why := tracking_off(params):  # said before anything runs, not as register's failure at the end
            get_run_logger().info("tracking is off (%s): the run will not be registered in MLflow", why)
        with project_lock(".", cfg.lock_timeout_s, reentrant=True), project_slot(".", cfg.lock_timeout_s):
            _end_left_running(params, project)
            run = _context(params, params_file, overrides, force)
            with kept_if_done(run.written):
                backoff = exponential_backoff(backoff_factor=cfg.retry_delay_s)
                retried = {"retry_delay_seconds": backoff, "retry_condition_fn": _retry_transient}
                ctx = quote(run)  # what every task reads, no upstream result (above)
                with bounded("prepare", "stage_timeout_s", cfg.stage_timeout_s):
                    prep = prepare_task.with_options(timeout_seconds=cfg.stage_timeout_s)(ctx)
                with bounded("train", "train_timeout_s", cfg.train_timeout_s):
                    trained = train_task.with_options(
                        retries=cfg.train_retries, timeout_seconds=cfg.train_timeout_s, **retried
                    )(ctx, prep.content_hash)
                with bounded("evaluate", "stage_timeout_s", cfg.stage_timeout_s):
                    ev = evaluate_task.with_options(timeout_seconds=cfg.stage_timeout_s)(ctx, trained)
                # Register always runs: it is idempotent (a run already registered is not registered
                # again, its promotion is re-decided), so an unchanged project ends with the same answer.
                with bounded("register", "stage_timeout_s", cfg.stage_timeout_s):
                    reg = register_task.with_options(
                        retries=cfg.register_retries, timeout_seconds=cfg.stage_timeout_s, **retried
                    )(ctx, trained, ev)
                dvc = "not used"
                if run.dvc is not None:
                    pending = run.dvc.status()
                    dvc = f"not clean: {', '.join(pending)}" if pending else "clean"
                summary = summarize(params, prep, trained, ev, reg, dvc)
                publish(summary, project)
                return summary
