"""A flow run's `--set` overrides in params.yaml: kept for what succeeded, undone for what did not.

DVC reads params from params.yaml, for every `dvc status` before a stage and every `dvc commit`
after it, so the overrides must be in the file while the stages run (`dvc_sync.write_overrides`,
what `dvc exp run -S` does). What stays there afterwards:

- the run succeeds: all of them (the file says what the recorded outputs were made with);
- the run fails (a stage's error, a timeout, Ctrl-C: any exception): the file as it was before the
  run, byte for byte, plus only the overrides of keys that a stage finished in this run (committed,
  or found up to date under them) depends on in dvc.yaml (`params:`). dvc.lock records those stages'
  outputs as made with those values; a file saying otherwise would make `dvc status` call correct
  outputs changed and the next run redo them. A `--set train.steps=300` whose prepare failed leaves
  no trace;
- the process is killed (kill -9, power loss): nothing can run then. `.sagan/params-run.json` (the
  file before and as written, the overrides, the stages finished so far, rewritten after each)
  lets the next `sagan pipeline run` on the project do the same undo first, before it writes its own
  overrides. Until then the file holds the killed run's overrides (whole: written atomically).
A params file edited by someone since the run wrote it is left as it is, with one warning.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import yaml

from pipelines.flow.dvc_sync import write_overrides
from sagan_core.atomic import write_atomic
from sagan_core.config import Params
from sagan_core.errors import ConfigError

log = logging.getLogger("sagan")
RECORD = Path(".sagan/params-run.json")  # relative to the project (the flow runs inside it)


class OverridesWritten:
    """The overrides one flow run wrote into its params file (project-relative paths)."""

    def __init__(self, record: dict):
        self.record = record

    @classmethod
    def write(cls, params_file: str | Path, overrides: list[str], typed: Params) -> OverridesWritten | None:
        """Write the overrides; None when the file did not change."""
        path = Path(params_file)
        before = path.read_bytes() if path.exists() else None
        if not write_overrides(path, overrides, typed):
            return None
        record = {
            "file": str(path),
            "before": None if before is None else base64.b64encode(before).decode(),
            "written": base64.b64encode(path.read_bytes()).decode(),
            "overrides": overrides,
            "finished": [],
        }
        self = cls(record)
        self._save()
        return self

    def finished(self, stage: str) -> None:
        """`stage` is recorded in dvc.lock under the written values (committed, or up to date)."""
        if stage not in self.record["finished"]:
            self.record["finished"].append(stage)
            self._save()

    def succeeded(self) -> None:
        RECORD.unlink(missing_ok=True)

    def failed(self) -> None:
        _undo(_saved() or self.record)  # the file: the stages may have run on a copy of this object
        RECORD.unlink(missing_ok=True)

    def _save(self) -> None:
        text = json.dumps(self.record)
        RECORD.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(RECORD, lambda f: f.write(text.encode()))


@contextlib.contextmanager
def kept_if_done(written: OverridesWritten | None) -> Iterator[None]:
    """Around a flow run's stages: all its overrides stay when it succeeds; on any failure
    (BaseException: Ctrl-C and Prefect's timeouts too) only those of the stages it finished."""
    if written is None:
        yield
        return
    try:
        yield
    except BaseException:
        written.failed()
        raise
    written.succeeded()


def undo_left_by_a_killed_run() -> None:
    """The undo a killed run could not do (its record is there: only a run that ended without
    `succeeded`/`failed` leaves one; the caller holds the project lock, so that run is gone)."""
    record = _saved()
    if record is None:
        return
    log.info("a killed run's --set overrides in %s: undone but for finished stages", record["file"])
    _undo(record)
    RECORD.unlink(missing_ok=True)


def _saved() -> dict | None:
    try:
        return json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return None


def _undo(record: dict) -> None:
    path = Path(record["file"])
    written = base64.b64decode(record["written"])
    if not path.exists() or path.read_bytes() != written:
        log.warning("%s changed since this run wrote its --set overrides into it: left as it is", path)
        return
    before = record["before"]
    if before is None:
        path.unlink()
    else:
        write_atomic(path, lambda f: f.write(base64.b64decode(before)))
    deps = _param_deps(record["finished"])
    keep = [o for o in record["overrides"] if _covered(o.partition("=")[0].strip(), deps)]
    try:
        if keep:
            write_overrides(path, keep)
    except ConfigError as e:  # these values alone do not validate on the old file: keep all
        write_atomic(path, lambda f: f.write(written))
        log.warning("%s: kept every --set override of the failed run (%s)", path, e)
        return
    log.info(
        "%s: the failed run's --set overrides undone%s",
        path,
        f", but for those of finished stages: {', '.join(keep)}" if keep else "",
    )


def _param_deps(stages: list[str]) -> list[str]:
    """The params.yaml keys the stages depend on (dvc.yaml `params:`; entries of other files left out)."""
    try:
        spec = yaml.safe_load(Path("dvc.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    keys = []
    for stage in stages:
        for entry in ((spec.get("stages") or {}).get(stage) or {}).get("params") or []:
            if isinstance(entry, str):
                keys.append(entry)
            elif isinstance(entry, dict):
                keys += [k for k in entry.get("params.yaml") or [] if isinstance(k, str)]
    return keys


def _covered(key: str, deps: list[str]) -> bool:
    """`train.lr_g` is covered by `train` or `train.lr_g`; `data` (a whole section) by `data.source`."""
    return any(key == d or key.startswith(d + ".") or d.startswith(key + ".") for d in deps)
