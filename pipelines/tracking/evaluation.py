"""Evaluation joins the training run: eval.json's numbers as `eval/` metrics at the generator's step,
the protocol as tags (MLflow params cannot change, and an evaluation may be rerun under another
protocol; `sagan.eval.protocol_id` says which runs compare).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pipelines.tracking.run_record import read_run_record, reopen
from pipelines.tracking.store import artifact_error, call, connect, enabled
from sagan_core.config import Params
from sagan_core.evaluate.identity import protocol_id
from sagan_core.evaluate.protocol import metrics_only


def reopen_run(params: Params) -> None:
    """Before the Inception pass (minutes): a server that is down fails now, not after it."""
    if enabled(params) and read_run_record(params) is not None:
        reopen(params, "sagan evaluate", refuse=False)  # an unfinished training may be evaluated


def log_evaluation(params: Params, eval_metrics: dict[str, Any]) -> str | None:
    """Add the scores and protocol to the training run; returns its id (None: not tracked)."""
    if not enabled(params):
        return None
    from mlflow.entities import Metric, RunTag

    record = read_run_record(params)
    if record is None:
        logging.getLogger("sagan.mlflow").warning("no MLflow run at %s: evaluation not tracked", params.train.run_record)
        return None
    client, uri = connect(params)
    run_id, step, now = record.run_id, int(eval_metrics["generator_step"]), int(time.time() * 1000)

    # eval.json's numbers but the step (a number the evaluation adds reaches MLflow with no edit here)
    numbers = {f"eval/{k}": float(v) for k, v in metrics_only(eval_metrics).items() if k != "generator_step"}
    metrics = [Metric(k, v, now, step) for k, v in numbers.items()  # an evaluation rerun adds no second row
               if not any(m.step == step and m.value == v for m in call(uri, client.get_metric_history, run_id, k))]
    tags = [RunTag(f"sagan.eval.{k}", v if isinstance(v, str) else json.dumps(v)) for k, v in eval_metrics.items() if f"eval/{k}" not in numbers]
    call(uri, client.log_batch, run_id, metrics=metrics, tags=[*tags, RunTag("sagan.eval.protocol_id", protocol_id(eval_metrics))])
    try:
        for eval_file in (f for f in (Path(params.eval.metrics_file), params.eval.record_file) if f.exists()):
            client.log_artifact(run_id, str(eval_file), "metrics")
    except Exception as e:  # noqa: BLE001 - any upload failure becomes the one-line artifact error
        raise artifact_error(uri, e, client, run_id) from None
    return run_id
