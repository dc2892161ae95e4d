"""DVC decides what the flow reruns and records what it ran: `dvc status <stage>` before a stage,
`dvc commit -f <stage>` after it (DVC's mechanism for outputs made outside `dvc repro`, here the flow's
own process with its progress, MLflow callback and launchers). DVC reads params.yaml only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipelines.quoting import sh
from sagan_core.errors import ConfigError, SaganError

log = logging.getLogger("sagan")


class DvcProject:
    def __init__(self, root: str | Path = "."):
        self.root = Path(root).resolve()
        spec = yaml.safe_load((self.root / "dvc.yaml").read_text()) or {}
        self.stages: list[str] = list((spec.get("stages") or {}).keys())

    @classmethod
    def find(cls, root: str | Path, mode: str, params_file: str | Path, warn: Callable[..., Any] = log.warning):
        """The project when DVC is used (`pipeline.dvc`; auto: when dvc.yaml and .dvc/ exist) for a
        run on `params_file`, else None; `yes` where DVC cannot be used is a ConfigError."""
        root = Path(root)
        present = (root / "dvc.yaml").exists() and (root / ".dvc").is_dir()
        if mode == "no" or (mode == "auto" and not present):
            return None
        if not present:
            raise ConfigError(f"pipeline.dvc: 'yes' but {root.resolve()} has no dvc.yaml and .dvc/")
        if Path(params_file).resolve() != (root / "params.yaml").resolve():
            if mode == "yes":
                raise ConfigError(f"--params {params_file}: pipeline.dvc is yes but DVC reads only params.yaml: run "
                                  f"`sagan init . --preset {sh(params_file)} --force` to make it params.yaml, or use --set overrides")
            warn("--params %s is not this project's params.yaml (what DVC reads): every stage runs, "
                 "without DVC's up-to-date skip or dvc.lock record", params_file)
            return None
        return cls(root)

    def _repo(self):
        """DVC's Repo, its loggers printing warnings only, once: `import dvc` gives them DVC's own console
        handlers and they also propagate to the root logger ("Updating lock file 'dvc.lock'" came twice)."""
        from dvc.repo import Repo  # its import adds DVC's handlers: before they are looked at

        for lg in map(logging.getLogger, ("dvc", "dvc_objects", "dvc_data")):
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
            lg.propagate = not lg.handlers  # no handler of DVC's own: the root logger's prints it, once
        return Repo(str(self.root))

    def status(self, stage: str | None = None) -> dict[str, Any]:
        """`dvc status [stage]`: {} when up to date; "always changed" alone (`check`) is left out."""
        with self._repo() as repo:
            found = repo.status(targets=[stage] if stage else None)
        return {name: what for name, what in found.items() if what != ["always changed"]}

    def changed(self, stage: str) -> bool:
        return stage not in self.stages or bool(self.status(stage))  # a stage DVC lacks always runs

    def commit(self, stage: str) -> bool:
        """Record the stage's deps, params and outs in dvc.lock and the cache; False if DVC lacks it."""
        if stage not in self.stages:
            return False
        try:
            with self._repo() as repo:
                repo.commit(stage, force=True)
        except Exception as e:  # DVC raises many types; the flow reports one line
            raise SaganError(f"dvc commit {stage}: {type(e).__name__}: {e}") from None
        return True
