"""The sagan version a project's outputs were made with: `sagan-version.yaml` in the project.

Every stage of a project made by `sagan init` has `sagan_version` in that file as a DVC params
dependency, so a new version shows every stage as changed in `dvc status`. Who writes it:
- `sagan init` (the installed version) and `sagan init DIR --upgrade` (after upgrading sagan);
- the Prefect flow (`sagan pipeline run`, scheduled runs) before it asks DVC what changed, so an
  upgrade reruns every stage without anyone editing a file.
The stage commands `dvc repro` runs (`sagan prepare|train|evaluate`) refuse to run under another
version than the recorded one (exit 2 naming the fix), so dvc.lock never records an output against
the version that did not make it. A folder without the file (this repository, older projects) is
not checked: its dvc.yaml has its own dependencies.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml

from sagan_core.atomic import write_atomic
from sagan_core.errors import ConfigError

VERSION_FILE = "sagan-version.yaml"
KEY = "sagan_version"
HEADER = (
    "# The sagan version this project's outputs were made with: every stage in dvc.yaml depends on it.\n"
    "# `sagan pipeline run` records a newly installed sagan here itself (every stage then reruns);\n"
    "# before a plain `dvc repro`, run `sagan init . --upgrade` after upgrading. Do not edit.\n"
)


def installed() -> str:
    """The installed sagan's version ("unknown" when run from a checkout that was never installed)."""
    try:
        return version("sagan")
    except PackageNotFoundError:
        return "unknown"


def recorded(root: str | Path = ".") -> str | None:
    """The version in ROOT/sagan-version.yaml, or None when the project has no such file."""
    path = Path(root) / VERSION_FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    value = data.get(KEY) if isinstance(data, dict) else None
    return str(value) if value is not None else ""


def write(root: str | Path = ".", value: str | None = None) -> str:
    """Record `value` (default: the installed version) in ROOT/sagan-version.yaml; returns it."""
    value = value or installed()
    text = HEADER + yaml.safe_dump({KEY: value})
    write_atomic(Path(root) / VERSION_FILE, lambda f: f.write(text.encode()))
    return value


def sync(root: str | Path = ".") -> str | None:
    """Record the installed version when the project records another one (the flow, before DVC is
    asked what changed); returns a one-line note when it did, else None."""
    before, now = recorded(root), installed()
    if before is None or before == now:
        return None
    write(root, now)
    return f"{VERSION_FILE}: sagan {before} -> {now}: every stage runs again with the new version"


def check(root: str | Path = ".") -> None:
    """Refuse (exit 2) to run a stage under another sagan than the project records."""
    before, now = recorded(root), installed()
    if before is not None and before != now:
        raise ConfigError(
            f"{VERSION_FILE}: this project's outputs were made by sagan {before!r}, this is sagan "
            f"{now!r}: run `sagan init . --upgrade` to record it (every stage then reruns), "
            f"or install sagan {before}"
        )
