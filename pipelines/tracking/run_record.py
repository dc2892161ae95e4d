"""The run record: `<train.out_dir>/mlflow_run.json` ties the local project to its one MLflow run.

`sagan train` writes it (run_id, experiment_id, the redacted tracking URI) when it opens the run and
adds model_id and step once the generator is logged; evaluate, register and `train --resume` read
it to reopen the same run.

A training killed before its first checkpoint leaves a record naming a run that wrote nothing,
while the checkpoint on disk is the previous run's: so the record keeps the run it replaced
(`previous`) and the step of each checkpoint its run wrote (`checkpoint_step`), and
`trained_record` answers which run wrote the checkpoint, or refuses (register and evaluate use it).

Reopening also sends what an outage made the server miss: a server that goes down mid-training loses
the rest of the curves (the callback stops logging and cannot even close the run, which stays
RUNNING), but every row is still in `metrics/train.csv`. `recover` logs each metric's steps after its
last logged one and ends a run left RUNNING (FINISHED when the checkpoint reached train.steps).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path
from typing import Any

from pipelines.tracking.names import LR_KEYS, train_metric
from pipelines.tracking.store import call
from sagan_core.atomic import write_json
from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError

log = logging.getLogger("sagan.mlflow")


def read_run_record(params: Params) -> dict[str, Any] | None:
    """The record, or None when no tracked training ran here yet."""
    path = params.train.run_record
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SaganError(f"{path}: unreadable MLflow run record ({e}); delete it and train again") from None


def write_run_record(params: Params, record: dict[str, Any]) -> None:
    """Atomic write: a crash never leaves a half-written record that loses the run id."""
    write_json(params.train.run_record, record)


def require_run(params: Params, what: str) -> dict[str, Any]:
    """The record, or a one-line ConfigError telling `what` to train with tracking on first."""
    record = read_run_record(params)
    if record is None:
        raise ConfigError(
            f"{what}: no MLflow run recorded at {params.train.run_record} "
            "(run `sagan train` with tracking on first)"
        )
    return record


def note_checkpoint(params: Params, run_id: str, step: int) -> None:
    """The run `run_id` wrote the checkpoint of `step` (a local write: also during an outage)."""
    record = read_run_record(params) or {}
    if record.get("run_id") == run_id:
        write_run_record(params, record | {"checkpoint_step": step})


def new_run_record(params: Params, run: dict[str, Any]) -> dict[str, Any]:
    """The record of a new run, keeping the run it replaces (without that one's own `previous`)."""
    old = read_run_record(params) or {}
    kept = {k: v for k, v in old.items() if k != "previous"}
    fresh = run | {"checkpoint_step": None}  # none yet: `trained_record` knows this run wrote none
    return fresh | ({"previous": kept} if kept.get("run_id") not in (None, run["run_id"]) else {})


def _wrote(record: dict[str, Any], step: int, params: Params) -> bool:
    """Whether the record's run finished the training whose checkpoint is at `step`: it logged the
    generator of that step, or wrote that checkpoint and it reached train.steps (an outage kept it
    from logging the generator). A record without the key predates it (or was written by hand)."""
    if "checkpoint_step" not in record:  # written before sagan recorded it (or by hand): trusted as then
        return True
    if record.get("step") == step:
        return True
    return record.get("checkpoint_step") == step and step >= params.train.steps


def trained_record(params: Params, what: str, refuse: bool = True) -> dict[str, Any]:
    """The record of the run that finished the training of the checkpoint (train.checkpoint).

    A run killed before its first checkpoint gives way to the run it replaced, when that one wrote
    the checkpoint (the record is put back, the killed run's id returned under `killed`); otherwise a
    one-line SaganError (with `refuse`; else the record as it is): registering it would put one
    run's name on another run's weights."""
    from sagan_core.model.checkpoint import step_of

    record = require_run(params, what)
    step = step_of(params.train.checkpoint)
    if step is None or _wrote(record, step, params):  # no local checkpoint: another machine's
        return record
    previous = record.get("previous") or {}
    if previous and _wrote(previous, step, params):
        write_run_record(params, previous)
        log.warning(
            "MLflow run %s was interrupted before writing a checkpoint: %s at step %d is run %s's",
            record["run_id"],
            params.train.checkpoint,
            step,
            previous["run_id"],
        )
        return previous | {"killed": record["run_id"]}
    done = record.get("checkpoint_step")
    if not refuse:
        return record
    raise SaganError(
        f"{what}: MLflow run {record['run_id']} did not finish training ({params.train.checkpoint} is at "
        f"step {step} of {params.train.steps}; "
        f"{'the run wrote no checkpoint' if done is None else f'its last checkpoint was step {done}'}): "
        "run `sagan train --resume` (or `sagan pipeline run`) first"
    )


def end_killed(client, uri: str, run_id: str) -> bool:
    """Mark a run left RUNNING by a killed process KILLED (the caller holds the project lock, so no
    sagan process of this project is running it)."""
    from mlflow.entities import RunStatus

    if call(uri, client.get_run, run_id).info.status != "RUNNING":
        return False
    call(uri, client.set_terminated, run_id, status=RunStatus.to_string(RunStatus.KILLED))
    log.info("MLflow run %s was left RUNNING by a killed process: marked KILLED", run_id)
    return True


def end_left_running(params: Params) -> list[str]:
    """At a run's start, under the project lock: the recorded runs (and the ones they replaced)
    still RUNNING were left so by a killed process; mark them KILLED. A resumed one runs again."""
    from pipelines.tracking.store import connect

    record = read_run_record(params) or {}
    ids = [r["run_id"] for r in (record, record.get("previous") or {}) if r.get("run_id")]
    if not ids:
        return []
    client, uri = connect(params)
    return [run_id for run_id in ids if end_killed(client, uri, run_id)]


# ---- after an outage ------------------------------------------------------------------------------
_BATCH = 1000  # log_batch takes at most 1000 metrics per call


def _rows(params: Params, upto: int) -> list[dict[str, str]]:
    """metrics/train.csv rows up to the checkpoint's step: later rows are redone by a resume."""
    path = Path(params.train.metrics_file)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def backfill(client, uri: str, params: Params, run_id: str, upto: int) -> int:
    """Log every metric's rows after its last logged step; returns how many values were sent."""
    from mlflow.entities import Metric

    rows = _rows(params, upto)
    if not rows:
        return 0
    now = int(time.time() * 1000)
    missing = []
    # train.csv's columns under their MLflow names (names.py); learning rates are logged only when
    # they change, which the callback saw and the CSV rows do not say: not sent again here
    for col in (k for k in rows[0] if k not in ("step", *LR_KEYS)):
        key = train_metric(col)
        last = max((m.step for m in call(uri, client.get_metric_history, run_id, key)), default=-1)
        missing += [
            Metric(key, float(r[col]), now, int(r["step"])) for r in rows if int(r["step"]) > last and r[col]
        ]
    for i in range(0, len(missing), _BATCH):
        call(uri, client.log_batch, run_id, metrics=missing[i : i + _BATCH])
    if missing:
        log.info(
            "MLflow run %s: %d metric values the server missed logged from %s",
            run_id,
            len(missing),
            params.train.metrics_file,
        )
    return len(missing)


def recover(client, uri: str, params: Params, run_id: str, end: bool) -> None:
    """Backfill the run's curves; with `end`, close a run left RUNNING by an interrupted training."""
    from mlflow.entities import RunStatus

    from sagan_core.model.checkpoint import step_of

    step = step_of(params.train.checkpoint) or 0
    backfill(client, uri, params, run_id, step)
    if not end or call(uri, client.get_run, run_id).info.status != "RUNNING":
        return
    status = RunStatus.FINISHED if step >= params.train.steps else RunStatus.FAILED
    call(uri, client.set_terminated, run_id, status=RunStatus.to_string(status))
    log.info("MLflow run %s was left RUNNING: ended %s", run_id, RunStatus.to_string(status))
