"""A data folder holds only regular files, directories and links to regular files inside it,
checked with lstat before anything reads it: DVC opens every entry (hidden ones too), so a FIFO
blocks it forever, a link to /dev/zero reads forever, a link out reads files the user never gave."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sagan_core.errors import SaganError

# by stat.filemode's type letter
_KINDS = {"p": "a FIFO (named pipe)", "s": "a socket", "c": "a character device", "b": "a block device"}


def _problem(path: Path, root: Path) -> str | None:
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if not stat.S_ISLNK(mode):
        return _KINDS.get(stat.filemode(mode)[0], "not a regular file")
    target = Path(os.path.realpath(path))
    if not target.is_relative_to(root):
        return f"a link leaving the folder (to {target})"
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a dangling link"
    if stat.S_ISDIR(mode):
        return "a link to a folder"  # sagan does not follow it; DVC would (and may loop)
    return None if stat.S_ISREG(mode) else "a link to something that is not a regular file"


def check_folder(root: str | Path, shown: str | None = None) -> None:
    """Refuse the folder in one line naming the first unsafe entry; `shown`: data.source as written."""
    resolved = Path(root).resolve()
    bad = sorted(
        (path.relative_to(resolved).as_posix(), why)
        for dirpath, dirnames, filenames in os.walk(resolved)  # never follows links into directories
        for path in (Path(dirpath, name) for name in dirnames + filenames)
        if (why := _problem(path, resolved))
    )
    if not bad:
        return
    (name, why), more = bad[0], f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise SaganError(
        f"data.source {shown or root}: {name} is {why}{more}; a data folder may hold only images and folders "
        "(DVC, which hashes the folder, would block on or read through it): remove it"
    )
