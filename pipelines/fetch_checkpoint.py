"""`sagan train --resume-from SOURCE`: a checkpoint file, `runs:/ID` (what the run uploaded) or
`models:/NAME@ALIAS|VERSION` (its run's; best.pt for a version registered as best) becomes
train.checkpoint; from MLflow the run record names that run, so resumed training logs into it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from pipelines.tracking.uploads import CHECKPOINT_DIR
from sagan_core.atomic import copy_atomic
from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError


def fetch(params: Params, source: str) -> None:
    """Put SOURCE's checkpoint at train.checkpoint (and, from MLflow, its run record)."""
    target = params.train.checkpoint
    if not source.startswith(("runs:/", "models:/")):
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"--resume-from {source}: no such checkpoint file")
        if path.resolve() != target.resolve():
            copy_atomic(path, target)
        return
    from pipelines.tracking.run_record import RunRecord, write_run_record
    from pipelines.tracking.store import call, connect, redact

    client, uri = connect(params)
    run_id, artifact = call(uri, _locate, client, source)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = call(uri, client.download_artifacts, run_id, f"{CHECKPOINT_DIR}/{artifact}", tmp)
        except SaganError:
            raise
        except Exception as e:  # noqa: BLE001 - MLflow/boto/OS errors: one line naming the source
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise SaganError(f"--resume-from {source}: cannot download {CHECKPOINT_DIR}/{artifact} ({first})") from None
        copy_atomic(Path(local), target)
    run = call(uri, client.get_run, run_id)
    write_run_record(params, RunRecord(run_id, run.info.experiment_id, redact(uri)))


def _locate(client, source: str) -> tuple[str, str]:
    """(run id, checkpoint file name in its CHECKPOINT_DIR artifacts) of a runs:/ or models:/ URI."""
    from mlflow.exceptions import MlflowException

    if source.startswith("runs:/"):
        run_id = source.removeprefix("runs:/").strip("/").split("/")[0]
        if not run_id:
            raise ConfigError(f"--resume-from {source}: expected runs:/<run_id>")
        return run_id, "checkpoint.pt"
    ref = source.removeprefix("models:/")
    try:
        if "@" in ref:
            mv = client.get_model_version_by_alias(*ref.split("@", 1))
        else:
            name, _, version = ref.partition("/")
            mv = client.get_model_version(name, version)
    except MlflowException as e:
        raise ConfigError(f"--resume-from {source}: no such model version ({e.message[:200]})") from None
    if not mv.run_id:
        raise ConfigError(f"--resume-from {source}: the version names no training run")
    return mv.run_id, "best.pt" if (mv.tags or {}).get("candidate") == "best" else "checkpoint.pt"
