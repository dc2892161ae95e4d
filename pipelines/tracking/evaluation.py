"""Evaluation joins the training run: FID/IS/KID as metrics at the generator's step, the protocol as tags.

Tags rather than params because MLflow params are immutable and an evaluation may be rerun (with
another protocol) on the same run; `sagan.eval.protocol_id` lets runs be compared only when equal.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pipelines.tracking.run_record import read_run_record, recover
from pipelines.tracking.store import artifact_error, call, connect, enabled
from sagan_core.config import Params
from sagan_core.evaluate.protocol import protocol_id

log = logging.getLogger("sagan.mlflow")

METRIC_KEYS = ("fid", "is_mean", "is_std", "kid_mean", "kid_std")


def reopen_run(params: Params) -> None:
    """Before the Inception pass (minutes): a one-line TrackingError if the run's server is down.

    The FID could not join its run anyway, and the user would wait for the whole pass to learn it.
    A run the server answers for gets what an outage made it miss (run_record.recover).
    """
    record = read_run_record(params) if enabled(params) else None
    if record is None:
        return
    client, uri = connect(params)
    call(uri, client.get_run, record["run_id"])
    recover(client, uri, params, record["run_id"], end=True)


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
    metrics = [
        Metric(k, float(v), now, step, **link)
        for k, v in eval_metrics.items()
        if k in METRIC_KEYS and isinstance(v, (int, float))  # KID is None without reference features
    ]
    tags = [
        RunTag(f"sagan.eval.{k}", json.dumps(v) if not isinstance(v, str) else v)
        for k, v in eval_metrics.items()
        if k not in METRIC_KEYS
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
