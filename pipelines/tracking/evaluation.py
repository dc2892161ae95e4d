"""Evaluation joins the training run: every number of eval.json as an `eval/` metric at the generator's
step (`eval/fid`, `eval/kid_mean`, `eval/is_mean`, ... : names.py), the protocol as tags.

Tags rather than params because MLflow params are immutable and an evaluation may be rerun (with
another protocol) on the same run; `sagan.eval.protocol_id` lets runs be compared only when equal.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pipelines.tracking.names import eval_metric
from pipelines.tracking.run_record import end_killed, read_run_record, recover, trained_record
from pipelines.tracking.store import artifact_error, call, connect, enabled
from sagan_core.config import Params
from sagan_core.evaluate.identity import protocol_id
from sagan_core.evaluate.protocol import metrics_only

log = logging.getLogger("sagan.mlflow")


def scores(eval_metrics: dict[str, Any]) -> dict[str, float]:
    """The numbers eval.json holds (sagan_core's `metrics_only`), less the step they are logged at:
    a number the evaluation adds to eval.json reaches MLflow as `eval/<key>` with no edit here."""
    return {k: float(v) for k, v in metrics_only(eval_metrics).items() if k != "generator_step"}


def reopen_run(params: Params) -> None:
    """Before the Inception pass (minutes): a one-line TrackingError if the run's server is down.

    The FID could not join its run anyway, and the user would wait for the whole pass to learn it.
    A run the server answers for gets what an outage made it miss (run_record.recover).
    """
    if not enabled(params) or read_run_record(params) is None:
        return
    # a checkpoint of an unfinished training may be evaluated; registering it is refused
    record = trained_record(params, "sagan evaluate", refuse=False)
    client, uri = connect(params)
    call(uri, client.get_run, record["run_id"])
    if killed := record.pop("killed", None):
        end_killed(client, uri, killed)
    recover(client, uri, params, record["run_id"], end=True)


def _on_model(client, model_id: str) -> set[tuple[str, int, float]]:
    """(key, step, value) of the metrics the LoggedModel already shows."""
    return {(m.key, m.step, m.value) for m in client.get_logged_model(model_id).metrics or []}


def _digest(params: Params) -> str:
    from pipelines.tracking.lineage import data_lineage

    return data_lineage(params)["content_hash"][:36]  # the run's dataset input digest (lineage.py)


def log_evaluation(params: Params, eval_metrics: dict[str, Any]) -> str | None:
    """Add FID/IS/KID and the protocol fields to the training run; returns its id.

    `eval_metrics` is what sagan_core's evaluate returns (and writes to eval.json). Skipped (None)
    when tracking is off or no tracked training ran here.
    """
    if not enabled(params):
        return None
    from mlflow.entities import Metric, RunTag

    record = read_run_record(params)
    if record is None:
        log.warning("no MLflow run recorded at %s: evaluation not tracked", params.train.run_record)
        return None
    client, uri = connect(params)
    run_id = record["run_id"]
    step = int(eval_metrics["generator_step"])
    now = int(time.time() * 1000)
    # linked to the LoggedModel of the evaluated generator when the run logged one for that step
    best = record.get("best") or {}
    model_id = best.get("model_id") if best.get("step") == step else None
    model_id = model_id or (record.get("model_id") if record.get("step") == step else None)
    link = (
        {"model_id": model_id, "dataset_name": "prepared", "dataset_digest": _digest(params)}
        if model_id
        else {}
    )
    numbers = scores(eval_metrics)  # KID is absent without reference features
    on_model = call(uri, _on_model, client, model_id) if model_id else set()
    metrics = [
        Metric(eval_metric(k), v, now, step, **link)
        for k, v in numbers.items()
        if (eval_metric(k), step, v) not in on_model  # an evaluation rerun adds no second row
    ]
    tags = [
        RunTag(f"sagan.eval.{k}", json.dumps(v) if not isinstance(v, str) else v)
        for k, v in eval_metrics.items()
        if k not in numbers
    ]
    tags.append(RunTag("sagan.eval.protocol_id", protocol_id(eval_metrics)))
    call(uri, client.log_batch, run_id, metrics=metrics, tags=tags)
    for eval_file in (Path(params.eval.metrics_file), params.eval.record_file):
        if eval_file.exists():
            try:
                client.log_artifact(run_id, str(eval_file), "metrics")
            except Exception as e:  # noqa: BLE001 - any upload failure becomes the one-line artifact error
                raise artifact_error(uri, e, client, run_id) from None
    return run_id
