"""The one atomic file writer: temp file in the same folder, fsync, rename, fsync the folder; a
failed write removes its temp and is WriteError naming the errno, even through writers that wrap it
(torch.save: RuntimeError "unexpected pos"). A crash leaves `.<name>.*.tmp`: remove_stale_temps."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import psutil

from sagan_core.errors import STORAGE_ERRNOS, WriteError

log = logging.getLogger("sagan")

# A temp file older than this process was begun by an earlier one, which may have died mid-write.
_STARTED = time.time()


def temp_name(path: Path) -> Path:
    """`.<name>.<random>.tmp` beside `path`, created by the caller with O_EXCL/mkdir: the umask (and
    a default ACL) then give the mode a plain open()/mkdir() would, where mkstemp/mkdtemp give 0600/0700."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


class _Remembering(io.BufferedWriter):
    """A file that remembers the OSError a write or flush raised, whatever the writer makes of it."""

    error: OSError | None = None

    def _remember(self, op: Callable, *args: Any) -> Any:
        try:
            return op(*args)
        except OSError as e:
            self.error = self.error or e
            raise

    def write(self, data) -> int:
        return self._remember(super().write, data)

    def flush(self) -> None:
        self._remember(super().flush)


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(file)`, atomically, with the mode a plain open() would give it."""
    path = Path(path)
    kept = "the previous file is unchanged" if path.exists() else "nothing was written"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temp_name(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
        raise WriteError(path, e, kept) from None
    f = _Remembering(io.FileIO(fd, "wb"))
    try:
        try:
            write(f)
        except Exception as e:
            # A write the disk refused, raised by a writer that bypasses the file object (no filename);
            # an OSError of the caller's that is no write (a failed download) keeps its meaning.
            refused = isinstance(e, OSError) and e.filename is None and e.errno in STORAGE_ERRNOS
            cause = f.error or (e if refused else None)
            if cause is None:
                raise
            raise WriteError(path, cause, kept) from None
        try:
            f.flush()
            os.fsync(fd)
            f.close()
            os.replace(tmp, path)
        except OSError as e:
            raise WriteError(path, f.error or e, kept) from None
    except BaseException:
        with contextlib.suppress(OSError):  # flushing into a full disk again fails; the temp goes
            f.close()
        tmp.unlink(missing_ok=True)
        raise
    try:
        fsync_dir(path.parent)
    except OSError as e:
        raise WriteError(path, e, "it was written but may not survive a crash") from None


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(f: BinaryIO, data: bytes, path: str | Path, sync: bool = False) -> None:
    """All of `data` to the unbuffered file `f` (nothing left in a buffer to fail again at close)."""
    try:
        view = memoryview(data)
        while view:  # a raw write may take part of it
            view = view[f.write(view) :]
        if sync:
            os.fsync(f.fileno())
    except OSError as e:
        raise WriteError(path, e) from None


def copy_atomic(src: str | Path, path: str | Path) -> None:
    with open(src, "rb") as f:
        write_atomic(path, lambda out: shutil.copyfileobj(f, out))


def write_json(path: str | Path, obj: Any) -> None:
    write_atomic(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files of interrupted writes in `folder`: older than this process and open in
    none (a concurrent writer's file is never pulled from under it); returns them."""
    folder = Path(folder)
    old = [p for p in folder.glob(".?*.*.tmp") if p.is_file() and p.stat().st_mtime < _STARTED]
    if not old:
        return []
    held: set[str] = set()
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):  # processes come and go; others' files may be hidden
            held.update(f.path for f in proc.open_files())
    stale = [p for p in old if str(p.resolve()) not in held]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        names = ", ".join(p.name for p in stale)
        log.info("removed %d stale temp file(s) of interrupted writes in %s: %s", len(stale), folder, names)
    return stale
