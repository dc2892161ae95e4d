"""The run record: `<train.out_dir>/mlflow_run.json` ties the local project to its one MLflow run.

`sagan train` writes it (run_id, experiment_id, the redacted tracking URI) when it opens the run and
adds model_id and step once the generator is logged; evaluate, register and `train --resume` read
it to reopen the same run.
"""

from __future__ import annotations

import json
from typing import Any

from sagan_core.atomic import write_json
from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError


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
