"""DVC as the cache of record for the Prefect flow.

The flow calls each stage's one implementation (pipelines.stages) itself, because only the flow
knows when a train must resume from its checkpoint (DVC would delete `models/` before re-running the
stage). DVC still decides and records: before a stage, `dvc status <stage>` says whether it must
run; after it, `dvc commit -f <stage>` writes its deps/params/outs into dvc.lock and the DVC cache,
exactly as `dvc repro` would have. So after a flow run `dvc status` is clean and `dvc repro` agrees.

DVC reads params.yaml, so `--set` overrides given to the flow are written into params.yaml first
(what `dvc exp run -S` does), with their validated types; otherwise dvc.lock would record values the
outputs were not made with. What stays there when a run fails: flow/params_writeback.py.
For the same reason a run on another params file (`--params FILE`) runs every stage without DVC: no
skip, no commit, said in one line (`without_dvc_note`); `pipeline.dvc: yes` refuses it instead.

DVC's INFO lines ("Updating lock file 'dvc.lock'") are not printed during these calls: the stage's
own line says "recorded in dvc.lock" (`_dvc_warnings_only`).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from pipelines.quoting import sh
from sagan_core.atomic import write_atomic
from sagan_core.config import Params
from sagan_core.errors import ConfigError, SaganError
from sagan_core.params_file import apply_override, load_params

log = logging.getLogger("sagan")
DVC_LOGGERS = ("dvc", "dvc_objects", "dvc_data")


@contextlib.contextmanager
def _dvc_warnings_only() -> Iterator[None]:
    """While DVC's Python API works for the flow, its loggers print warnings and errors only, once.

    `import dvc` gives these loggers DVC's own console handlers (its CLI's, writing to stdout and
    stderr) and they also propagate to the root logger, whose handler prints to the terminal too:
    every line of `dvc commit`, "Generating lock file 'dvc.lock'" / "Updating lock file 'dvc.lock'",
    came out twice per stage. The stage's line says what was recorded instead; warnings still come
    out, through DVC's own handler only, as the `dvc` command prints them."""
    import dvc  # noqa: F401 - its import adds DVC's handlers (dvc.logger.setup): here, before they are looked at

    loggers = [logging.getLogger(name) for name in DVC_LOGGERS]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
        lg.propagate = not lg.handlers  # no handler of DVC's own: the root logger's prints it, once
    try:
        yield
    finally:
        for lg, (level, propagate) in zip(loggers, saved, strict=True):
            lg.setLevel(level)
            lg.propagate = propagate


class DvcProject:
    """The DVC project at `root` (dvc.yaml + .dvc/), queried through DVC's Python API."""

    def __init__(self, root: str | Path = "."):
        self.root = Path(root).resolve()
        spec = yaml.safe_load((self.root / "dvc.yaml").read_text()) or {}
        self.stages: list[str] = list((spec.get("stages") or {}).keys())

    @classmethod
    def find(cls, root: str | Path, mode: str) -> DvcProject | None:
        """The project when DVC sync is on (`pipeline.dvc`: auto = when dvc.yaml and .dvc/ exist)."""
        root = Path(root)
        present = (root / "dvc.yaml").exists() and (root / ".dvc").is_dir()
        if mode == "no" or (mode == "auto" and not present):
            return None
        if not present:
            raise ConfigError(f"pipeline.dvc: 'yes' but {root.resolve()} has no dvc.yaml and .dvc/")
        return cls(root)

    def _repo(self):
        from dvc.repo import Repo

        return Repo(str(self.root))

    @contextlib.contextmanager
    def _quiet_repo(self):
        with _dvc_warnings_only(), self._repo() as repo:
            yield repo

    def status(self, stage: str | None = None) -> dict[str, Any]:
        """`dvc status [stage]`: {} when up to date. A stage that is only "always changed" (an `sagan
        init` project's `check`) is left out: it says nothing about the outputs."""
        with self._quiet_repo() as repo:
            found = repo.status(targets=[stage] if stage else None)
        return {name: what for name, what in found.items() if what != ["always changed"]}

    def changed(self, stage: str) -> bool:
        if stage not in self.stages:
            return True  # not tracked by DVC: always run
        return bool(self.status(stage))

    def commit(self, stage: str) -> bool:
        """Record the stage's current deps, params and outs in dvc.lock and the DVC cache; False
        when DVC does not track the stage."""
        if stage not in self.stages:
            return False
        try:
            with self._quiet_repo() as repo:
                repo.commit(stage, force=True)
        except Exception as e:  # DVC raises many types; the flow reports one line
            raise SaganError(f"dvc commit {stage}: {type(e).__name__}: {e}") from None
        return True


def reads_params(params_file: str | Path, mode: str) -> bool:
    """Whether DVC can record a run on `params_file`: only the project's own params.yaml (DVC reads
    nothing else). Another file with `pipeline.dvc: yes` is a ConfigError (said before anything runs)."""
    if Path(params_file).resolve() == Path("params.yaml").resolve():
        return True
    if mode == "yes":
        raise ConfigError(
            f"--params {params_file}: pipeline.dvc is yes but DVC reads only params.yaml: run "
            f"`sagan init . --preset {sh(params_file)} --force` to make it params.yaml, or use --set overrides"
        )
    return False


def without_dvc_note(params_file: str | Path) -> str:
    return (
        f"--params {params_file} is not this project's params.yaml (what DVC reads): every stage runs, "
        "without DVC's up-to-date skip or dvc.lock record"
    )


def write_overrides(params_file: str | Path, overrides: list[str], typed: Params | None = None) -> bool:
    """Apply `key.path=value` overrides to the params file, keeping its comments; True if it changed.

    Each key is written with its validated value (`typed`: the Params the run uses; validated here
    when not given), not the text given: `--set train.lr_g=2e-4` is the float 0.0002, though YAML 1.1
    (PyYAML) reads `2e-4` as a string. `pipeline.*` overrides are flow settings for this run only and
    are never written.
    """
    from ruamel.yaml import YAML

    persistent = [o for o in overrides if not o.strip().startswith("pipeline.")]
    if not persistent:
        return False
    path = Path(params_file)
    typed = typed or load_params(path, persistent)
    values = typed.model_dump(mode="json")
    rt = YAML()  # round-trip mode: comments and key order survive
    rt.preserve_quotes = True
    # `null` stays `null` (ruamel writes an empty value: the file's own nulls would change form)
    rt.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    data = rt.load(path.read_text()) if path.exists() else {}
    before = yaml.safe_load(path.read_text()) if path.exists() else {}
    for assignment in persistent:
        apply_override(data, assignment)
        keys = assignment.partition("=")[0].strip().split(".")
        node = data
        for part in keys[:-1]:
            node = node[part]
        node[keys[-1]] = _scalar(rt, _at(values, keys))
    out = io.StringIO()
    rt.dump(data, out)
    if yaml.safe_load(out.getvalue()) == before:
        return False
    write_atomic(path, lambda f: f.write(out.getvalue().encode()))  # a kill -9 never truncates it
    log.info("wrote %s into %s (DVC reads params from it)", ", ".join(persistent), path)
    return True


def _at(values: dict[str, Any], keys: list[str]) -> Any:
    for key in keys:
        values = values[key]
    return values


def _scalar(rt, value: Any) -> Any:
    """`value` as a node both readers of params.yaml read back as `value`: sagan's (PyYAML, YAML 1.1)
    and DVC's (ruamel, YAML 1.2). PyYAML's own text for it (`2.0e-04`, `'yes'`), loaded round-trip so
    ruamel keeps that form; a string ruamel would read otherwise (`2e-4`) double-quoted."""
    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    if isinstance(value, str) and YAML(typ="safe").load(yaml.safe_dump(value)) != value:
        return DoubleQuotedScalarString(value)
    return rt.load(yaml.safe_dump(value, default_flow_style=True))
