"""The Prefect flow `sagan-pipeline`: prepare -> train -> evaluate -> register.

Each task calls the one implementation of its stage (pipelines.stages) and passes on only paths,
hashes and numbers. DVC is the cache of record (pipelines.dvc_sync): a stage that `dvc status`
calls up to date is skipped, and a stage that ran is `dvc commit`ted. Training is never restarted
blindly: the train task resumes from `models/checkpoint.pt` whenever that checkpoint was made from
the same data and params (a retried task, or a rerun after a crash or kill -9), and its resume is
bit-exact, so the result equals an uninterrupted run.

One run per project at a time (pipelines.lock). Stage failures stop the flow with
`stage NAME failed: cause`; outputs of the stages before it are kept (and committed to DVC), so a
rerun continues from the failed stage.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from sagan_core.config import Params, load_params
from sagan_core.errors import ConfigError, SaganError
from sagan_core.trainer import Callback

from . import stages
from .dvc_sync import DvcProject, write_overrides
from .lock import project_lock

STATE_DIR = Path(".sagan/pipeline")
TRAIN_STAMP = STATE_DIR / "train-fingerprint.json"
HISTORY = STATE_DIR / "history.jsonl"
# Train params that change nothing in the trained weights: a checkpoint made with other values of
# these can still be resumed (train.steps too: `--resume` continues the same run to more steps).
_NOT_IN_FINGERPRINT = {"steps", "log_every", "sample_every", "checkpoint_every", "compile"}


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
def _stage(name: str) -> Iterator[None]:
    try:
        yield
    except StageFailed:
        raise
    except Exception as e:
        raise StageFailed(name, e) from e


@contextlib.contextmanager
def _sagan_logs_to_prefect() -> Iterator[None]:
    """Send the stages' `sagan` log lines to the Prefect UI too, for the flow run's duration only
    (outside a flow run Prefect's API handler has nowhere to send them)."""
    from prefect.logging.handlers import APILogHandler

    logger, handler = logging.getLogger("sagan"), APILogHandler()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _NoTracebackForOwnErrors(logging.Formatter):
    """Prefect logs a failed task or flow run with its traceback (three of them, chained, for one
    missing file). Our own errors (SaganError: bad config, missing weights, diverged training)
    already say what failed and what to do, so on the terminal they are shown without one;
    unexpected exceptions keep theirs. Only the console changes: the Prefect UI gets every record whole."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    @staticmethod
    def own_error(record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return isinstance(exc, SaganError) and not getattr(exc, "transient", False)

    def format(self, record: logging.LogRecord) -> str:
        if not self.own_error(record):
            return self.inner.format(record)
        saved = record.exc_info, record.exc_text  # restored: later handlers see the full record
        record.exc_info = record.exc_text = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


@contextlib.contextmanager
def short_console_errors() -> Iterator[None]:
    """While a flow runs in this process, print our own errors without tracebacks (see above).

    The console is whatever the root logger prints through: Prefect's console handler, or the
    `sagan` CLI's plain one when its logging was set up first."""
    from prefect.logging.handlers import APILogHandler

    handlers = [h for h in logging.getLogger().handlers if not isinstance(h, APILogHandler)]
    saved = [h.formatter for h in handlers]
    for h in handlers:
        h.setFormatter(_NoTracebackForOwnErrors(h.formatter))
    try:
        yield
    finally:
        for h, f in zip(handlers, saved, strict=True):
            h.setFormatter(f)


def _sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _params(run: dict[str, Any]) -> Params:
    return load_params(run["params_file"], run["overrides"])


def _must_run(stage: str, run: dict[str, Any]) -> bool:
    if run["force"] or not run["dvc"]:
        return True
    changed = DvcProject(".").changed(stage)
    if not changed:
        get_run_logger().info("%s: up to date (dvc status), skipped", stage)
    return changed


def _commit(stage: str, run: dict[str, Any]) -> None:
    if run["dvc"]:
        DvcProject(".").commit(stage)


# ---- prepare -------------------------------------------------------------------------------------
@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(run: dict[str, Any]) -> dict[str, Any]:
    with _stage("prepare"):
        params = _params(run)
        if not _must_run("prepare", run):
            manifest = json.loads((Path(params.data.prepared_dir) / "manifest.json").read_text())
            return {"skipped": True, "content_hash": manifest["content_hash"]}
        # In a child process: prepare decodes with a process pool, and forking this process (which
        # runs Prefect's threads) can deadlock the workers on locks those threads hold.
        _cli_subprocess("prepare", run, "--quiet")
        manifest = json.loads((Path(params.data.prepared_dir) / "manifest.json").read_text())
        _commit("prepare", run)
        return {
            "skipped": False,
            "content_hash": manifest["content_hash"],
            "num_images": manifest["num_images"],
        }


# ---- train ---------------------------------------------------------------------------------------
def train_fingerprint(params: Params, data_hash: str) -> str:
    """What a checkpoint must have been made from to be resumable: data, model and train params."""
    train = {k: v for k, v in params.train.model_dump().items() if k not in _NOT_IN_FINGERPRINT}
    blob = json.dumps(
        {"data": data_hash, "model": params.model.model_dump(), "train": train, "hflip": params.data.hflip},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def checkpoint_step(path: Path) -> int | None:
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # missing, truncated or foreign: not resumable
        return None


def resume_decision(params: Params, data_hash: str, force: bool) -> tuple[bool, str]:
    """(resume?, why): resume only a checkpoint of this very run that is not past train.steps."""
    ckpt = Path(params.train.out_dir) / "checkpoint.pt"
    if force:
        return False, "force: training from step 0"
    if not ckpt.exists():
        return False, "no checkpoint: training from step 0"
    stamp = json.loads(TRAIN_STAMP.read_text()) if TRAIN_STAMP.exists() else {}
    if stamp.get("fingerprint") != train_fingerprint(params, data_hash):
        return False, "checkpoint is from other data or params: training from step 0"
    step = checkpoint_step(ckpt)
    if step is None or step > params.train.steps:
        return False, f"checkpoint step {step} does not fit train.steps={params.train.steps}: from step 0"
    return True, f"resuming from the checkpoint at step {step}"


class PrefectProgress(Callback):
    """Training progress in the Prefect UI: a progress artifact and one log line per log interval."""

    def __init__(self, steps: int):
        self.steps, self.artifact_id = steps, None

    def on_start(self, info: dict[str, Any]) -> None:
        self.artifact_id = create_progress_artifact(
            100.0 * info["start_step"] / self.steps,
            key="sagan-train-progress",
            description=f"sagan training, {self.steps} steps",
        )

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        if self.artifact_id is not None:
            update_progress_artifact(self.artifact_id, 100.0 * step / self.steps)
        get_run_logger().info(
            "train step %d/%d  loss_d %.4f  loss_g %.4f  %.0f img/s",
            step,
            self.steps,
            metrics["loss_d"],
            metrics["loss_g"],
            metrics.get("img_per_s", 0.0),
        )


def _cli_subprocess(stage: str, run: dict[str, Any], *extra: str) -> None:
    """`sagan STAGE` in a child process, its output forwarded line by line to the Prefect log."""
    cmd = [sys.executable, "-m", "pipelines.cli", stage, "--params", run["params_file"]]
    for o in run["overrides"]:
        cmd += ["--set", o]
    cmd += list(extra)
    logger = get_run_logger()
    logger.info("running %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in proc.stdout:  # forwarded as they come: progress stays visible in the UI
        if line.strip():
            last = line.strip()
            logger.info(last)
    if proc.wait() != 0:
        if last.startswith("sagan: "):  # the CLI's own one-line message: that is the cause
            raise SaganError(last.removeprefix("sagan: ").removeprefix("error: "))
        raise SaganError(f"sagan {stage} exited with code {proc.returncode}: {last}")


@task(name="train", cache_policy=NO_CACHE)
def train_task(run: dict[str, Any], data_hash: str) -> dict[str, Any]:
    with _stage("train"):
        params = _params(run)
        ckpt = Path(params.train.out_dir) / "checkpoint.pt"
        logger = get_run_logger()
        samples = str(Path(params.train.samples_dir) / "latest.png")
        if not _must_run("train", run):
            return {
                "skipped": True,
                "checkpoint": str(ckpt),
                "sha256": _sha256(ckpt),
                "step": checkpoint_step(ckpt),
                "trained_steps": 0,
                "samples": samples,
            }
        resume, why = resume_decision(params, data_hash, run["force"])
        logger.info("train: %s", why)
        start = checkpoint_step(ckpt) if resume else 0
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        TRAIN_STAMP.write_text(json.dumps({"fingerprint": train_fingerprint(params, data_hash)}))
        if params.train.nproc_per_node > 1:
            # The `sagan train` path that relaunches itself under torchrun.
            _cli_subprocess("train", run, *(["--resume"] if resume else []))
        else:
            stages.train(
                params, resume=resume, progress=False, callbacks=[PrefectProgress(params.train.steps)]
            )
        end = checkpoint_step(ckpt)
        _commit("train", run)
        return {
            "skipped": end == start,
            "checkpoint": str(ckpt),
            "sha256": _sha256(ckpt),
            "step": end,
            "trained_steps": end - start,
            "samples": samples,
        }


# ---- evaluate and register -----------------------------------------------------------------------
@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(run: dict[str, Any], checkpoint_sha256: str) -> dict[str, Any]:
    with _stage("evaluate"):
        params = _params(run)
        metrics_file = Path(params.eval.metrics_file)
        if not _must_run("evaluate", run):
            return json.loads(metrics_file.read_text()) | {"skipped": True}
        result = stages.evaluate(params, progress=False)
        _commit("evaluate", run)
        return dict(result) | {"skipped": False}


@task(name="register", cache_policy=NO_CACHE)
def register_task(run: dict[str, Any], checkpoint_sha256: str, fid: float | None) -> dict[str, Any]:
    with _stage("register"):
        result = stages.register(_params(run))
        _commit("register", run)
        return dict(result) | {"skipped": False}


# ---- artifacts -----------------------------------------------------------------------------------
def _metric(d: dict[str, Any], *names: str) -> float | None:
    for n in names:
        if isinstance(d.get(n), int | float):
            return float(d[n])
    return None


def _fmt(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else ("-" if x is None else str(x))


def publish(summary: dict[str, Any]) -> None:
    """The markdown summary and the table of past runs, as Prefect artifacts."""
    s = summary
    link = f"[{s['mlflow_run']}]({s['mlflow_url']})" if s.get("mlflow_url") else _fmt(s.get("mlflow_run"))
    md = "\n".join(
        [
            "# sagan pipeline run",
            "",
            "| | |",
            "|---|---|",
            f"| FID | {_fmt(s.get('fid'))} |",
            f"| IS | {_fmt(s.get('is'))} |",
            f"| KID | {_fmt(s.get('kid'))} |",
            f"| decision | **{_fmt(s.get('decision'))}**: {_fmt(s.get('reason'))} |",
            f"| registered | {_fmt(s.get('model_name'))} v{_fmt(s.get('version'))} ({_fmt(s.get('alias'))}) |",
            f"| data hash | `{s['data_hash']}` |",
            f"| trained | {s['trained_steps']} steps (checkpoint step {s.get('step')}) |",
            f"| sample grid | `{s.get('samples')}` (also under the MLflow run's artifacts) |",
            f"| MLflow run | {link} |",
            f"| DVC | {'`dvc status` clean' if s.get('dvc_clean') else s.get('dvc_note', 'not used')} |",
        ]
    )
    create_markdown_artifact(md, key="sagan-summary", description="sagan: evaluation and promotion")
    rows = [json.loads(line) for line in HISTORY.read_text().splitlines()[-50:]] if HISTORY.exists() else []
    columns = ["time", "data_hash", "trained_steps", "fid", "kid", "version", "decision"]
    table = [{c: _fmt(r.get(c)) for c in columns} for r in reversed(rows)]
    create_table_artifact(table, key="sagan-runs", description="sagan pipeline runs, newest first")


def _run_url(reg: dict[str, Any]) -> str | None:
    """The MLflow UI page of the run (samples under its artifacts); `mlflow ui` for a local store."""
    if not reg.get("run_id"):
        return None
    uri = str(reg.get("tracking_uri") or "")
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    try:
        import mlflow

        exp = mlflow.MlflowClient(reg.get("tracking_uri")).get_run(reg["run_id"]).info.experiment_id
    except Exception:  # the link is a convenience; never fail a finished run over it
        return None
    return f"{base}/#/experiments/{exp}/runs/{reg['run_id']}"


def _summary(params: Params, prep: dict, trained: dict, ev: dict, reg: dict) -> dict[str, Any]:
    from prefect.runtime import flow_run

    return {
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "flow_run": str(flow_run.id),
        "data_hash": prep["content_hash"][:12],
        "trained_steps": trained.get("trained_steps", 0),
        "step": trained.get("step"),
        "checkpoint": trained["checkpoint"],
        "samples": str(Path(params.train.samples_dir) / "latest.png"),
        "fid": _metric(ev, "fid"),
        "kid": _metric(ev, "kid", "kid_mean"),
        "is": _metric(ev, "is", "is_mean", "inception_score"),
        "model_name": reg.get("model_name", params.registry.model_name),
        "version": reg.get("version"),
        "alias": reg.get("alias", reg.get("decision")),  # the decision is the alias it got
        "decision": reg.get("decision"),
        "reason": reg.get("reason"),
        "mlflow_run": reg.get("run_id"),
        "mlflow_url": _run_url(reg),
        "tracking_uri": reg.get("tracking_uri"),
    }


# ---- the flow ------------------------------------------------------------------------------------
@contextlib.contextmanager
def _in_dir(path: str | Path) -> Iterator[None]:
    """Stages use project-relative paths (as `sagan` and dvc.yaml do): run inside the project."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@flow(name="sagan-pipeline", description="prepare -> train -> evaluate (FID/KID) -> register (MLflow)")
def sagan_pipeline(
    params_file: str = "params.yaml",
    overrides: list[str] | None = None,
    force: bool = False,
    project_dir: str = ".",
) -> dict[str, Any]:
    """Run the four stages on the project in `project_dir`.

    overrides: `key.path=value` strings, exactly like `sagan ... --set` (and validated the same way).
    force: run every stage even when nothing changed (also `pipeline.force`).
    """
    overrides = list(overrides or [])
    with _sagan_logs_to_prefect(), _in_dir(project_dir):
        params = load_params(params_file, overrides)
        cfg = params.pipeline
        with project_lock(".", cfg.lock_timeout_s):
            dvc = DvcProject.find(".", cfg.dvc)
            if dvc is not None and params_file != "params.yaml":
                raise ConfigError(f"--params {params_file}: DVC reads params.yaml; use --set overrides")
            if dvc is not None:
                write_overrides(params_file, overrides)
            run = {
                "params_file": params_file,
                "overrides": overrides,
                "force": force or cfg.force,
                "dvc": dvc is not None,
            }
            backoff = exponential_backoff(backoff_factor=cfg.retry_delay_s)
            prep = prepare_task.with_options(timeout_seconds=cfg.stage_timeout_s)(run)
            trained = train_task.with_options(
                retries=cfg.train_retries,
                retry_delay_seconds=backoff,
                retry_condition_fn=_retry_transient,
                timeout_seconds=cfg.train_timeout_s,
            )(run, prep["content_hash"])
            ev = evaluate_task.with_options(timeout_seconds=cfg.stage_timeout_s)(run, trained["sha256"])
            # Register always runs: it is idempotent (a run already registered is not registered
            # again, its promotion is re-decided), so an unchanged project ends with the same answer.
            reg = register_task.with_options(
                retries=cfg.register_retries,
                retry_delay_seconds=backoff,
                retry_condition_fn=_retry_transient,
                timeout_seconds=cfg.stage_timeout_s,
            )(run, trained["sha256"], _metric(ev, "fid"))
            summary = _summary(params, prep, trained, ev, reg)
            if dvc is not None:
                pending = dvc.status()
                summary["dvc_clean"] = not pending
                if pending:
                    summary["dvc_note"] = f"not clean: {', '.join(pending)}"
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            with HISTORY.open("a") as f:
                f.write(json.dumps(summary) + "\n")
            publish(summary)
            return summary
