"""What a pipeline run tells its user: training progress in Prefect, what each stage made, the run's
Prefect artifacts (summary with the sample grid, result row, past runs: history.py), closing lines."""

from __future__ import annotations

import base64
import io
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from pipelines.flow.history import COLUMNS, RESULT_KEY, past_runs, shown_value
from pipelines.quoting import md, md_code, sh
from pipelines.results import Evaluated, NotRegistered, Prepared, Registered, Trained
from pipelines.tracking.store import redact
from sagan_core.config import Params
from sagan_core.train.progress import Callback, step_line

INLINE_SIDE = 320  # px: the summary's grid is downscaled to this (an inline image, kept small)
INLINE_BYTES = 200_000  # a larger PNG is left out of the summary (the path is still given)


@dataclass(frozen=True)
class RunSummary:
    """One pipeline run, as the flow returns it (and the `sagan-result` artifact)."""

    time: str
    flow_run: str
    data_hash: str  # the prepared data's content_hash, first 12 hex digits
    trained_steps: int
    step: int  # the checkpoint's step
    checkpoint: str
    samples: str
    fid: float
    kid: float | None
    is_mean: float
    model_name: str
    version: int | None  # None: not registered (tracking off)
    version_step: int | None  # the generator step the version holds
    version_fid: float | None  # the version's own FID (the same as `fid` unless nothing new was registered)
    decision: str  # the alias the version got: champion | challenger; "skipped" when not registered
    reason: str
    mlflow_run: str | None
    mlflow_url: str | None
    tracking_uri: str | None
    dvc: str  # "clean", "not clean: <stages>", or "not used"


class PrefectProgress(Callback):
    """A progress artifact and one log line per log interval."""

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
        get_run_logger().info("train %s", step_line(step, self.steps, metrics))


def stage_detail(result: Prepared | Trained | Evaluated | Registered, *more: str) -> str:
    """What a stage made, for its line (console.stage_line)."""
    if isinstance(result, Prepared):
        classes = f", {result.num_classes} classes" if result.num_classes > 1 else ""
        made = f"{result.num_images} images{classes}, {result.rejected} rejected"
    elif isinstance(result, Trained):
        steps = f"{result.trained_steps} steps" if result.trained_steps else "nothing left to train"
        made = f"{steps}, checkpoint at step {result.step}"
    elif isinstance(result, Evaluated):
        made = f"FID {result.fid:.4g} on {result.num_samples} samples, generator step {result.generator_step}"
    else:
        again = "" if result.created else ", registered before"
        made = f"{result.model_name} v{result.version}{again}: {result.decision}"
    return "; ".join(part for part in (made, *more) if part)


def summarize(
    params: Params,
    prep: Prepared,
    trained: Trained,
    ev: Evaluated,
    reg: Registered | NotRegistered,
    dvc: str,
) -> RunSummary:
    from prefect.runtime import flow_run

    if isinstance(reg, NotRegistered):
        registered = dict.fromkeys(
            ("version", "version_step", "version_fid", "mlflow_run", "mlflow_url", "tracking_uri")
        )
        registered |= {"decision": "skipped", "reason": reg.reason}
    else:
        registered = {"version": reg.version, "decision": reg.decision, "reason": reg.reason}
        registered |= {"version_step": reg.generator_step, "version_fid": reg.fid}
        registered |= {"mlflow_run": reg.run_id, "mlflow_url": run_url(reg), "tracking_uri": reg.tracking_uri}
    return RunSummary(
        time=time.strftime("%Y-%m-%d %H:%M:%S"),
        flow_run=str(flow_run.id),
        data_hash=prep.content_hash[:12],
        trained_steps=trained.trained_steps,
        step=trained.step,
        checkpoint=trained.checkpoint,
        samples=str(params.train.latest_samples),
        fid=ev.fid,
        kid=ev.kid_mean,
        is_mean=ev.is_mean,
        model_name=reg.model_name,
        dvc=dvc,
        **registered,
    )


def run_url(reg: Registered) -> str | None:
    """The run's MLflow UI page: the tracking server's, or `mlflow ui`'s default address."""
    uri = reg.tracking_uri
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    try:
        import mlflow

        exp = mlflow.MlflowClient(uri).get_run(reg.run_id).info.experiment_id
    except Exception:  # the link is a convenience; never fail a finished run over it
        return None
    # The UI's own `workflowType` link parameter: MLflow 3.17 picks its GenAI or model-training
    # layout from browser storage (GenAI on a first visit), not from the experiment's
    # `mlflow.experimentKind` tag (mlflow/mlflow#24498); the parameter opens model training.
    return f"{base}/#/experiments/{exp}/runs/{reg.run_id}?workflowType=machine_learning"


def inline_png(path: str | Path) -> str | None:
    """The grid as a data: URI PNG (None when unreadable or too big): Prefect's image artifact takes
    only a URL, but its UI renders a data: image in a markdown artifact (docs/screenshots.md)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.thumbnail((INLINE_SIDE, INLINE_SIDE), Image.LANCZOS)
            buf = io.BytesIO()
            im.convert("RGB" if im.mode not in ("L", "RGB") else im.mode).save(buf, "PNG", optimize=True)
    except (OSError, ValueError):
        return None
    data = buf.getvalue()
    return f"data:image/png;base64,{base64.b64encode(data).decode()}" if len(data) <= INLINE_BYTES else None


def summary_markdown(s: RunSummary) -> str:
    """The run's markdown summary; every user-named piece quoted as text (pipelines/quoting.py)."""
    # a link destination in a table cell: what would end it %-encoded
    url = quote(s.mlflow_url or "", safe=":/?#[]@!$&*+,;=%~-._")
    link = (
        f"[{md(s.mlflow_run)}]({url}) (with `mlflow ui` running)"
        if s.mlflow_url
        else md(shown_value(s.mlflow_run))
    )
    if s.version is None:
        decision = [f"| registered | skipped: {md(s.reason)} |"]
    else:
        decision = [
            f"| decision | **{s.decision}**: {md(s.reason)} |",
            f"| registered | {md(s.model_name)} v{s.version} ({s.decision}): the generator at step"
            f" {s.version_step}, FID {shown_value(s.version_fid)} |",
        ]
    grid_where = "below; also under the MLflow run's artifacts" if s.mlflow_run else "below"
    text = "\n".join(
        [
            "# sagan pipeline run",
            "",
            "| | |",
            "|---|---|",
            f"| FID | {shown_value(s.fid)} |",
            f"| IS | {shown_value(s.is_mean)} |",
            f"| KID | {shown_value(s.kid)} |",
            *decision,
            f"| data hash | {md_code(s.data_hash)} |",
            f"| trained | {s.trained_steps} steps (checkpoint step {s.step}) |",
            f"| sample grid | {md_code(s.samples)} ({grid_where}) |",
            f"| MLflow run | {link} |",
            f"| DVC | {'`dvc status` clean' if s.dvc == 'clean' else md(s.dvc)} |",
        ]
    )
    grid = inline_png(s.samples)
    if grid:
        text += f"\n\n## Samples at step {s.step}\n\n![sample grid, step {s.step}]({grid})\n"
    return text


def publish(s: RunSummary, project: str) -> None:
    """The summary, the result row and the table of the project's runs (history.py)."""
    create_markdown_artifact(
        summary_markdown(s), key="sagan-summary", description="sagan: evaluation and promotion"
    )
    result = {c: getattr(s, c) for c in COLUMNS[3:]}
    create_table_artifact([result], key=RESULT_KEY, description="this run's scores and decision")
    create_table_artifact(
        past_runs(project), key="sagan-runs", description="this project's runs, newest first"
    )


def _tool(name: str) -> str:
    """NAME as the user can type it here: .venv/bin/NAME when sagan runs from there."""
    exe = Path(sys.executable).parent / name
    try:
        return sh(exe.relative_to(Path.cwd()))
    except ValueError:
        return name


def final_report(s: RunSummary, params: Params) -> str:
    uri = redact(
        params.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    )
    kid = f"  (KID {s.kid:.4f})" if s.kid is not None else ""
    if s.version is None:  # tracking off: nothing of this run is in MLflow to look at
        registered = [f"  registered  : skipped ({s.reason})"]
    else:
        registered = [
            f"  registered  : {s.model_name} version {s.version} (generator step {s.version_step}, FID "
            f"{s.version_fid:.3f}), alias {s.decision} ({s.reason})",
            f"  MLflow UI   : {_tool('mlflow')} ui --backend-store-uri {sh(uri)}",
            *([f"                then open {s.mlflow_url}"] if s.mlflow_url else []),
        ]
    return "\n".join(
        [
            "sagan pipeline: done",
            f"  sample grid : {s.samples}",
            f"  FID         : {s.fid:.3f}{kid}",
            f"  trained     : {s.trained_steps} new steps (checkpoint at step {s.step})",
            *registered,
            f"  Prefect UI  : {_tool('prefect')} server start   (then open http://127.0.0.1:4200)",
        ]
    )
