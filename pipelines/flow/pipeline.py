"""The Prefect flow `sagan-pipeline`: prepare -> train -> evaluate -> register, one run per project.

It validates the params file + overrides once into `Params`, carried to the tasks in a `RunContext`.
DVC decides what reruns (`dvc status <stage>`) and records what ran (`dvc commit`); the train task
resumes a checkpoint with the run's fingerprint (sagan_core.train.resume), bit-exactly.
"""

# No `from __future__ import annotations`: a served run loads this file under a module name not kept
# in sys.modules, where pydantic (Prefect's parameter check) cannot resolve string annotations.
import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

from pipelines import launch, stages
from pipelines.flow import kubernetes_train, notify, params_writeback
from pipelines.flow.console import StageLine, sagan_logs_to_prefect, stage_line
from pipelines.flow.dvc_sync import DvcProject
from pipelines.flow.history import end_orphans, project_tag, tag_flow_run
from pipelines.flow.report import PrefectProgress, RunSummary, publish, stage_detail, summarize
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
    def __init__(self, stage: str, cause: BaseException):
        text = str(cause) if isinstance(cause, SaganError) else f"{type(cause).__name__}: {cause}"
        super().__init__(f"stage {stage} failed: {text}")
        self.stage = stage
        # Our own errors are permanent (bad config, missing weights); others may pass on a retry.
        self.transient = not isinstance(cause, SaganError)


@contextlib.contextmanager
def _stage(name: str) -> Iterator[StageLine]:
    """A task's body: its failure as `stage NAME failed: cause`, its one line when it ends."""
    with stage_line(name, get_run_logger()) as line:
        try:
            yield line
        except Exception as e:
            raise StageFailed(name, e) from e


@dataclass(frozen=True)
class RunContext:
    """What every task needs, built once per flow run."""

    params: Params
    force: bool
    dvc: DvcProject | None

    def up_to_date(self, line: StageLine) -> bool:
        """DVC decides: a stage `dvc status` finds up to date is skipped (unless --force)."""
        if self.force or self.dvc is None or self.dvc.changed(line.name):
            return False
        line.skipped = "dvc status: up to date"
        params_writeback.finished(line.name)  # its --set overrides now stay in params.yaml
        return True

    def commit(self, line: StageLine, result):
        """`dvc commit` the stage that ran (what `dvc repro` records); its line says what it made."""
        recorded = self.dvc is not None and self.dvc.commit(line.name)
        params_writeback.finished(line.name)
        line.detail = stage_detail(result, "recorded in dvc.lock" if recorded else "")
        return result


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(run: RunContext) -> Prepared:
    with _stage("prepare") as line:
        # Before any `dvc status`: DVC's hashing blocks forever on a FIFO (data/safe_folder.py).
        stages.check_source(run.params, record=run.dvc is not None and "check" in run.dvc.stages)
        if run.dvc is not None:
            run.dvc.commit("check")  # no-op where dvc.yaml has no check stage
        if run.up_to_date(line):
            return stages.prepared(run.params)
        return run.commit(line, stages.prepare(run.params, progress=False))


@task(name="train", cache_policy=NO_CACHE)
def train_task(run: RunContext, data_hash: str) -> Trained:
    with _stage("train") as line:
        params = run.params
        if run.up_to_date(line):
            return stages.trained(params)
        do_resume, why = resume.decide(params, data_hash, run.force)
        logger = get_run_logger()
        logger.info("train: %s", why)
        if params.train.launcher == "kubernetes":  # a Job of train.nnodes pods (docs/scale-out.md)
            result = kubernetes_train.train_on_cluster(params, do_resume, log=logger.info)
        elif launch.distributed(params):  # train.nproc_per_node DDP processes, their lines in the Prefect log
            start = resume.start_step(params.train.checkpoint) if do_resume else 0
            code, last = launch.run_torchrun(params, do_resume, quiet=True, log=logger.info, forward=True)
            if code != 0:  # the CLI's own one-line message, when it printed one, is the cause
                cause = last.removeprefix("sagan: ").removeprefix("error: ")
                raise SaganError(cause if last.startswith("sagan: ") else f"torchrun exited with code {code}: {last}")
            result = stages.trained(params, start_step=start)
        else:
            progress = PrefectProgress(params.train.steps)
            result = stages.train(params, resume=do_resume, progress=False, callbacks=[progress])
        return run.commit(line, result)


# Tasks take the results they consume as arguments: Prefect's UI draws the graph's edges from them.
# The RunContext goes in `quote`d: Prefect matches arguments to results by identity, and walking its
# fields (strings also held by a result) drew edges no data took.
@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(run: RunContext, trained: Trained) -> Evaluated:
    with _stage("evaluate") as line:
        get_run_logger().info("evaluate: the %s checkpoint of training at step %d", run.params.eval.checkpoint, trained.step)
        if run.up_to_date(line):
            return stages.evaluated(run.params)
        return run.commit(line, stages.evaluate(run.params, progress=False))


def tracking_off(params: Params) -> str | None:
    """Why this run cannot be registered (tracking off: no MLflow run holds its model), or None."""
    if tracking_store.enabled(params):
        return None
    if not params.tracking.enabled:
        return "tracking.enabled: false"
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


def _bounded(task_, cfg, key: str, *args, **options):
    """The task under its pipeline.KEY timeout; Prefect's ("Scope timed out after N second(s).") as
    the stage's one line."""
    seconds = getattr(cfg, key)
    try:
        return task_.with_options(timeout_seconds=seconds, **options)(*args)
    except TimeoutError:
        raise SaganError(f"stage {task_.name} failed: timed out after {seconds:g} s (pipeline.{key})") from None


@flow(
    name="sagan-pipeline",
    description="prepare -> train -> evaluate (FID/KID) -> register (MLflow)",
    on_completion=[notify.on_completion], on_failure=[notify.on_failure],
    on_crashed=[notify.on_crashed], on_cancellation=[notify.on_cancellation],
)
def sagan_pipeline(params_file: str = "params.yaml", overrides: list[str] | None = None, force: bool = False,
                   project_dir: str = ".", params: Params | None = None) -> RunSummary:
    """Run the four stages on the project in `project_dir` with `params_file` and `overrides`
    (`key.path=value`, as `--set`); `force` (or pipeline.force): every stage, even when up to date.
    `params`: those two already validated in this process (the CLI's), so they are validated once."""
    overrides = list(overrides or [])
    # Stages use project-relative paths (as `sagan` and dvc.yaml do): run inside the project.
    with sagan_logs_to_prefect(), contextlib.chdir(project_dir):
        logger, project = get_run_logger(), project_tag()  # the summary's past runs are this project's
        tag_flow_run(project)
        params = params or load_params(params_file, overrides)  # carried to every task
        cfg = params.pipeline
        if cfg.notify_block:  # where the hooks find it (notify.py)
            tag_flow_run(notify.TAG + cfg.notify_block)
        if why := tracking_off(params):  # said before anything runs, not as register's failure at the end
            logger.info("tracking is off (%s): the run will not be registered in MLflow", why)
        with project_lock(".", cfg.lock_timeout_s, reentrant=True), project_slot(".", cfg.lock_timeout_s):
            # Runs a killed process left RUNNING: Prefect's Crashed, MLflow's KILLED. Never fails the
            # run: a tracking server that is down fails train in one line.
            if ended := end_orphans(project):
                logger.info("flow runs left RUNNING by a killed process, marked Crashed: %s", ", ".join(ended))
            try:
                if not tracking_off(params):
                    end_left_running(params)
            except Exception as e:  # noqa: BLE001 - any tracking failure is reported by the stages that need it
                logger.warning("could not check for MLflow runs left RUNNING: %s", str(e).splitlines()[0][:200])
            params_writeback.undo()  # a killed run's overrides, before anything reads params.yaml
            dvc = DvcProject.find(".", cfg.dvc, params_file, warn=logger.warning)
            if dvc is not None:
                if note := version.sync("."):
                    logger.info("%s", note)
                params_writeback.write(params_file, overrides, params)
            ctx = quote(RunContext(params, force or cfg.force, dvc))  # quoted: no upstream result
            with params_writeback.kept_if_done():
                retried = {  # a failed task's state carries its exception (StageFailed.transient)
                    "retry_delay_seconds": exponential_backoff(backoff_factor=cfg.retry_delay_s),
                    "retry_condition_fn": lambda task_, run_, state: getattr(state.data, "transient", True),
                }
                stage_s = "stage_timeout_s"
                prep = _bounded(prepare_task, cfg, stage_s, ctx)
                trained = _bounded(train_task, cfg, "train_timeout_s", ctx, prep.content_hash, retries=cfg.train_retries, **retried)
                ev = _bounded(evaluate_task, cfg, stage_s, ctx, trained)
                # Register always runs: idempotent, an unchanged project ends with the same answer.
                reg = _bounded(register_task, cfg, stage_s, ctx, trained, ev, retries=cfg.register_retries, **retried)
                pending = ", ".join(dvc.status()) if dvc is not None else None
                state = "not used" if dvc is None else f"not clean: {pending}" if pending else "clean"
                summary = summarize(params, prep, trained, ev, reg, state)
                publish(summary, project)
                return summary
