"""One pipeline run per project at a time: an exclusive `fcntl` lock on `.sagan/pipeline.lock`.

Flow runs share the project's outputs (data/prepared, models/, metrics/, dvc.lock), so two runs at
once would interleave writes. The kernel drops the lock when its holder dies (even by kill -9), so
a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from sagan_core.errors import SaganError

LOCK_FILE = ".sagan/pipeline.lock"


class ProjectBusy(SaganError):
    """Another pipeline run holds the project lock."""


@contextlib.contextmanager
def project_lock(root: str | Path = ".", timeout_s: float = 0.0, poll_s: float = 0.2) -> Iterator[Path]:
    """Hold the project's pipeline lock; wait up to `timeout_s`, then fail naming the holder."""
    path = Path(root) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = path.read_text().strip() or "another process"
                    raise ProjectBusy(
                        f"another pipeline run ({holder}) is using this project; wait for it or raise "
                        "pipeline.lock_timeout_s"
                    ) from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}".encode())
        yield path
    finally:
        os.close(fd)  # closing releases the flock
