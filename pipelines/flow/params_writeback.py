"""A flow run's `--set` overrides, written into params.yaml, where DVC reads params (as `dvc exp run -S`).
A run that succeeds keeps them. A failed run, or the next run after a kill -9 (from RECORD), puts the
file back byte for byte plus the overrides of the stages it finished (dvc.lock records their outputs
with them); a file edited since it was written is left alone, with a warning."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import operator
from collections.abc import Iterator
from pathlib import Path

import yaml

from pipelines.project.create import set_values
from sagan_core.atomic import write_atomic, write_json
from sagan_core.config import Params
from sagan_core.errors import ConfigError
from sagan_core.params_file import load_params

log = logging.getLogger("sagan")
RECORD = Path(".sagan/params-run.json")  # the file before and as written, overrides, finished stages


def write_overrides(params_file: str | Path, overrides: list[str], typed: Params | None = None) -> bool:
    """Apply `key.path=value` overrides to the file, comments kept; True if it changed. Each key gets
    its validated value (`typed`, else validated here): `train.lr_g=2e-4` is the float 0.0002, though
    PyYAML reads `2e-4` as a string. `pipeline.*` overrides are this run's flow settings: never written."""
    persistent = [o for o in overrides if not o.strip().startswith("pipeline.")]
    if not persistent:
        return False
    path = Path(params_file)
    values = (typed or load_params(path, persistent)).model_dump(mode="json")
    keys = [o.partition("=")[0].strip() for o in persistent]
    text = path.read_text() if path.exists() else ""
    new = set_values(text, {k: functools.reduce(operator.getitem, k.split("."), values) for k in keys})
    if yaml.safe_load(new) == yaml.safe_load(text):
        return False
    write_atomic(path, lambda f: f.write(new.encode()))  # a kill -9 never truncates it
    log.info("wrote %s into %s (DVC reads params from it)", ", ".join(persistent), path)
    return True


def write(params_file: str | Path, overrides: list[str], typed: Params) -> bool:
    """Write the run's overrides and RECORD; False when the file did not change."""
    path = Path(params_file)
    before = base64.b64encode(path.read_bytes()).decode() if path.exists() else None
    if not write_overrides(path, overrides, typed):
        return False
    written = base64.b64encode(path.read_bytes()).decode()
    write_json(RECORD, {"file": str(path), "before": before, "written": written, "overrides": overrides, "finished": []})
    return True


def finished(stage: str) -> None:
    """`stage` is in dvc.lock under this run's overrides (committed, or up to date); none: no-op."""
    record = _saved()
    if record is not None and stage not in record["finished"]:
        record["finished"].append(stage)
        write_json(RECORD, record)


@contextlib.contextmanager
def kept_if_done() -> Iterator[None]:
    """Around a run's stages: any failure (BaseException: Ctrl-C, Prefect's timeouts) undoes."""
    try:
        yield
    except BaseException:
        undo()
        raise
    RECORD.unlink(missing_ok=True)


def undo() -> None:
    """Undo what RECORD names: this run's failure, or a killed one's at the next run's start (the
    caller holds the project lock, so that run is gone)."""
    if (record := _saved()) is not None:
        _undo(record)
        RECORD.unlink(missing_ok=True)


def _undo(record: dict) -> None:
    path, written = Path(record["file"]), base64.b64decode(record["written"])
    if not path.exists() or path.read_bytes() != written:
        log.warning("%s changed since this run wrote its --set overrides into it: left as it is", path)
        return
    if record["before"] is None:
        path.unlink()
    else:
        write_atomic(path, lambda f: f.write(base64.b64decode(record["before"])))
    deps = _param_deps(record["finished"])
    keep = [o for o in record["overrides"] if _covered(o.partition("=")[0].strip(), deps)]
    try:
        if keep:
            write_overrides(path, keep)
    except ConfigError as e:  # these values alone do not validate on the old file: keep all
        write_atomic(path, lambda f: f.write(written))
        log.warning("%s: kept every --set override of the failed run (%s)", path, e)
        return
    but = f", but for those of finished stages: {', '.join(keep)}" if keep else ""
    log.info("%s: the failed run's --set overrides undone%s", path, but)


def _saved() -> dict | None:
    try:
        return json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return None


def _param_deps(stages: list[str]) -> list[str]:
    """The params.yaml keys the stages depend on (dvc.yaml `params:`; other files' entries left out)."""
    try:
        spec = (yaml.safe_load(Path("dvc.yaml").read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError):
        return []
    entries = [e for stage in stages for e in (spec.get(stage) or {}).get("params") or []]
    keys = [e for e in entries if isinstance(e, str)]
    keys += [k for e in entries if isinstance(e, dict) for k in e.get("params.yaml") or []]
    return [k for k in keys if isinstance(k, str)]


def _covered(key: str, deps: list[str]) -> bool:
    """`train.lr_g` is covered by `train` or `train.lr_g`; `data` (a whole section) by `data.source`."""
    return any(key == d or key.startswith(d + ".") or d.startswith(key + ".") for d in deps)
