"""The one atomic file writer: temp file in the same folder, fsync, rename, fsync the folder; a
failed write removes its temp and is WriteError naming the errno, even through writers that wrap it
(torch.save: RuntimeError "unexpected pos"). A crash leaves `.<name>.*.tmp`: remove_stale_temps."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from sagan_core.errors import STORAGE_ERRNOS, WriteError

log = logging.getLogger("sagan")

# A temp file older than this process was begun by an earlier one, which may have died mid-write.
_STARTED = time.time()


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask can only set it, for every thread)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):  # not Linux: set it and put it back
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def user_mode(directory: bool = False) -> int:
    """The mode open()/mkdir() would give (mkstemp/mkdtemp give 0600/0700)."""
    return (0o777 if directory else 0o666) & ~current_umask()


class _Remembering(io.BufferedWriter):
    """A file that remembers the OSError a write or flush raised, whatever the writer makes of it."""

    error: OSError | None = None

    def write(self, data) -> int:
        try:
            return super().write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as e:
            self.error = self.error or e
            raise


def _refused(e: OSError) -> bool:
    """A write the disk refused, raised by a writer that bypasses the file object."""
    return e.filename is None and e.errno in STORAGE_ERRNOS


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(file)`, atomically, with the mode a plain open() would give it."""
    path = Path(path)
    kept = "the previous file is unchanged" if path.exists() else "nothing was written"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(path, e, kept) from None
    f = _Remembering(io.FileIO(fd, "wb"))
    try:
        try:
            write(f)
        except Exception as e:
            # An OSError of the caller's that is no write (a failed download) keeps its meaning.
            cause = f.error or (e if isinstance(e, OSError) and _refused(e) else None)
            if cause is None:
                raise
            raise WriteError(path, cause, kept) from None
        try:
            f.flush()
            os.fsync(fd)
            os.fchmod(fd, user_mode())
            f.close()
            os.replace(tmp, path)
        except OSError as e:
            raise WriteError(path, f.error or e, kept) from None
    except BaseException:
        with contextlib.suppress(OSError):  # flushing into a full disk again fails; the temp goes
            f.close()
        Path(tmp).unlink(missing_ok=True)
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


def _open_elsewhere(paths: set[str]) -> set[str]:
    held: set[str] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                target = os.readlink(fd)
                if target in paths:
                    held.add(target)
        except OSError:  # processes come and go, and others' fds may be unreadable
            continue
    return held


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the temp files of interrupted writes in `folder`: older than this process and open in
    none (a concurrent writer's file is never pulled from under it); returns them."""
    folder = Path(folder)
    old = [p for p in folder.glob(".?*.*.tmp") if p.is_file() and p.stat().st_mtime < _STARTED]
    if not old:
        return []
    held = _open_elsewhere({str(p.resolve()) for p in old})
    stale = [p for p in old if str(p.resolve()) not in held]
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        names = ", ".join(p.name for p in stale)
        log.info("removed %d stale temp file(s) of interrupted writes in %s: %s", len(stale), folder, names)
    return stale
