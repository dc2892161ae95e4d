"""`<train.out_dir>/mlflow_run.json`: the one record of the project's MLflow run (`RunRecord`).

A training killed before its first checkpoint leaves a record naming a run that wrote nothing, so
the record keeps the run it replaced and its newest checkpoint's step (`trained_record`); what an
outage made the server miss is sent again from metrics/train.csv (`recover`).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

from pipelines.tracking.store import call, connect, redact
from sagan_core.atomic import write_json
from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError

log = logging.getLogger("sagan.mlflow")

UNKNOWN = "unknown"  # checkpoint_step of a record from --resume-from or written by hand: trusted
LR_KEYS = ("lr_g", "lr_d")


def train_metric(key: str) -> str:
    """MLflow 3 groups a run's charts by the part before the first `/` (train.csv keeps its names)."""
    section = "train_eval" if key in ("kid", "kid_std", "fid") else "attention" if key.startswith("gamma_") else "train"
    return f"{section}/{key}"


def to_log(seen: dict[str, float], metrics: dict[str, float]) -> dict[str, float]:
    """`metrics` less the learning rates unchanged since `seen` (updated in place): a constant rate
    is a param, and as a metric a flat line MLflow's axis labels 0; one changes only on a resume."""
    changed = {k: float(metrics[k]) for k in LR_KEYS if k in metrics and float(metrics[k]) != seen.get(k)}
    seen.update(changed)
    return {k: v for k, v in metrics.items() if k not in LR_KEYS} | changed


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    experiment_id: str
    tracking_uri: str  # redacted
    step: int | None = None  # the step this run finished training at
    checkpoint_step: int | None | Literal["unknown"] = UNKNOWN  # its newest checkpoint; None: none yet
    previous: RunRecord | None = None  # the run it replaced

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        """Keys of older records (model_id, best) are ignored."""
        known = {f.name for f in fields(cls)} - {"previous"}
        before = d.get("previous")
        return cls(**{k: v for k, v in d.items() if k in known}, previous=cls.from_dict(before) if before else None)

    def trained(self, step: int, steps: int) -> bool:
        """Whether it finished training the checkpoint at `step` (or wrote it at train.steps: an outage)."""
        done = self.checkpoint_step == UNKNOWN or self.step == step
        return done or (self.checkpoint_step == step and step >= steps)


def read_run_record(params: Params) -> RunRecord | None:
    path = params.train.run_record
    if not path.exists():
        return None
    try:
        return RunRecord.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise SaganError(f"{path}: unreadable MLflow run record ({e}); delete it and train again") from None


def write_run_record(params: Params, record: RunRecord) -> None:
    write_json(params.train.run_record, asdict(record))  # atomic: a crash never loses the run id


def opened(params: Params, run_id: str, experiment_id: str, uri: str) -> None:
    """Training writes to run `run_id`: a resumed run's record is kept, a new one keeps the run it replaces."""
    old = read_run_record(params)
    if not old or old.run_id != run_id:  # no checkpoint yet: `trained_record` knows it wrote none
        write_run_record(params, RunRecord(run_id, experiment_id, redact(uri), None, None, old and replace(old, previous=None)))


def note(params: Params, run_id: str, **changes: Any) -> None:
    """Update the record of run `run_id` (local: also during an outage)."""
    record = read_run_record(params)
    if record and record.run_id == run_id:
        write_run_record(params, replace(record, **changes))


def trained_record(params: Params, what: str, refuse: bool = True) -> tuple[RunRecord, str | None]:
    """(record of the run that trained train.checkpoint, a killed run it replaces in the file), else a
    one-line SaganError (with `refuse`): registering would put one run's name on another's weights."""
    from sagan_core.model.checkpoint import step_of

    record = read_run_record(params)
    if record is None:
        raise ConfigError(f"{what}: no MLflow run recorded at {params.train.run_record} (run `sagan train` first)")
    step, steps = step_of(params.train.checkpoint), params.train.steps
    if step is None or record.trained(step, steps):  # no local checkpoint: another machine's
        return record, None
    if record.previous and record.previous.trained(step, steps):
        write_run_record(params, record.previous)
        log.warning("MLflow run %s was interrupted before writing a checkpoint: %s at step %d is run %s's",
                    record.run_id, params.train.checkpoint, step, record.previous.run_id)
        return record.previous, record.run_id
    if not refuse:
        return record, None
    done = record.checkpoint_step
    done = "the run wrote no checkpoint" if done is None else f"its last checkpoint was step {done}"
    raise SaganError(f"{what}: MLflow run {record.run_id} did not finish training ({params.train.checkpoint} is at "
                     f"step {step} of {steps}; {done}): run `sagan train --resume` (or `sagan pipeline run`) first")


def reopen(params: Params, what: str, refuse: bool = True):
    """(record, client, uri) of the run that trained the checkpoint, checked on its server, made whole."""
    from mlflow.exceptions import MlflowException

    record, killed = trained_record(params, what, refuse)
    client, uri = connect(params)
    try:
        call(uri, client.get_run, record.run_id)
    except MlflowException as e:
        if e.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ConfigError(f"{what}: MLflow run {record.run_id} ({params.train.run_record}) does not exist at {redact(uri)}") from None
    if killed:
        end_running(client, uri, killed)
    recover(client, uri, params, record.run_id, end=True)
    return record, client, uri


def end_running(client, uri: str, run_id: str, status: str = "KILLED") -> bool:
    """End a run left RUNNING (by a killed process: KILLED; the caller holds the project lock)."""
    if call(uri, client.get_run, run_id).info.status != "RUNNING":
        return False
    call(uri, client.set_terminated, run_id, status=status)
    by = " by a killed process: marked" if status == "KILLED" else ": ended"
    log.info("MLflow run %s was left RUNNING%s %s", run_id, by, status)
    return True


def end_left_running(params: Params) -> list[str]:
    """At a run's start, under the project lock: recorded runs still RUNNING were killed; mark them."""
    record = read_run_record(params)
    ids = [r.run_id for r in (record, record and record.previous) if r]
    if not ids:
        return []
    client, uri = connect(params)
    return [run_id for run_id in ids if end_running(client, uri, run_id)]


def recover(client, uri: str, params: Params, run_id: str, end: bool) -> None:
    """Backfill the run's curves; with `end`, close a run an interrupted training left RUNNING."""
    from mlflow.entities import Metric

    from sagan_core.model.checkpoint import step_of

    step = step_of(params.train.checkpoint) or 0
    # train.csv's rows after each column's last logged step, up to the checkpoint (a resume redoes later ones)
    path = Path(params.train.metrics_file)
    with open(path if path.exists() else os.devnull, newline="") as f:  # no train.csv: no rows
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    now, missing = int(time.time() * 1000), []
    # learning rates are logged only when they change, which the CSV rows do not say
    for col in (k for k in (rows[0] if rows else {}) if k not in ("step", *LR_KEYS)):
        key = train_metric(col)
        last = max((m.step for m in call(uri, client.get_metric_history, run_id, key)), default=-1)
        missing += [Metric(key, float(r[col]), now, int(r["step"])) for r in rows if int(r["step"]) > last and r[col]]
    for i in range(0, len(missing), 1000):  # log_batch takes at most 1000 metrics per call
        call(uri, client.log_batch, run_id, metrics=missing[i : i + 1000])
    if missing:
        log.info("MLflow run %s: %d metric values the server missed logged from %s", run_id, len(missing), path)
    if end:
        end_running(client, uri, run_id, "FINISHED" if step >= params.train.steps else "FAILED")
