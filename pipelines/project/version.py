"""`sagan-version.yaml`: the sagan version a project's outputs were made with, a DVC params dependency
of every stage (a new version reruns them all). The stages refuse to run under another version, so
dvc.lock never records an output against a version that did not make it; a folder without it is not checked."""

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
    """The installed sagan's version ("unknown" from a checkout never installed)."""
    try:
        return version("sagan")
    except PackageNotFoundError:
        return "unknown"


def recorded(root: str | Path = ".") -> str | None:
    path = Path(root) / VERSION_FILE
    if not path.is_file():
        return None
    data = yaml.safe_load(path.read_text()) or {}
    value = data.get(KEY) if isinstance(data, dict) else None
    return str(value) if value is not None else ""


def write(root: str | Path = ".", value: str | None = None) -> str:
    value = value or installed()
    text = HEADER + yaml.safe_dump({KEY: value})
    write_atomic(Path(root) / VERSION_FILE, lambda f: f.write(text.encode()))
    return value


def sync(root: str | Path = ".") -> str | None:
    """Record the installed version when the project records another; a one-line note when it did."""
    before, now = recorded(root), installed()
    if before is None or before == now:
        return None
    write(root, now)
    return f"{VERSION_FILE}: sagan {before} -> {now}: every stage runs again with the new version"


def check(root: str | Path = ".") -> None:
    before, now = recorded(root), installed()
    if before is not None and before != now:
        raise ConfigError(f"{VERSION_FILE}: this project's outputs were made by sagan {before!r}, this is sagan {now!r}: "
                          f"run `sagan init . --upgrade` to record it (every stage then reruns), or install sagan {before}")
