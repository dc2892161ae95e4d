"""A data folder holds only regular files, directories and links to regular files inside it.

Anything else is refused before anything reads the folder, DVC included: DVC hashes every entry of
prepare's dependency (hidden ones too) by opening it, so a FIFO blocks it forever, a link to
/dev/zero reads forever, a link out of the folder reads files the user never gave, and a dangling
link fails DVC with a traceback. Only `lstat` is used here: nothing in the folder is opened.

`check_folder` is called by `sagan prepare` (sources.folder_source), by the Prefect flow before its
first `dvc status`, and by the `check` stage an `sagan init` project runs first under `dvc repro`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sagan_core.errors import SaganError

_KINDS = {
    stat.S_ISFIFO: "a FIFO (named pipe)",
    stat.S_ISSOCK: "a socket",
    stat.S_ISCHR: "a character device",
    stat.S_ISBLK: "a block device",
}


def _problem(path: Path, root: Path) -> str | None:
    """Why `path` (an entry under `root`) may not be in a data folder, or None."""
    mode = os.lstat(path).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    if not stat.S_ISLNK(mode):
        return next((what for test, what in _KINDS.items() if test(mode)), "not a regular file")
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


def unsafe_entries(root: str | Path) -> list[tuple[str, str]]:
    """(relative path, why) for every entry of `root` that is not a regular file, a directory, or a
    link to a regular file inside `root`; hidden entries included (DVC hashes them too)."""
    root = Path(root).resolve()
    found = []
    for dirpath, dirnames, filenames in os.walk(root):  # never follows links into directories
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if why := _problem(path, root):
                found.append((path.relative_to(root).as_posix(), why))
    return sorted(found)


def check_folder(root: str | Path, shown: str | None = None) -> None:
    """Refuse the folder in one line naming the first unsafe entry (and how many more); `shown`:
    how the user wrote data.source."""
    bad = unsafe_entries(root)
    if not bad:
        return
    (name, why), more = bad[0], f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    raise SaganError(
        f"data.source {shown or root}: {name} is {why}{more}; a data folder may hold only images and folders "
        "(DVC, which hashes the folder, would block on or read through it): remove it"
    )
