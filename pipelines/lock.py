"""One sagan run per project at a time: an exclusive `fcntl` lock on `.sagan/pipeline.lock`.

Runs share the project's outputs (data/prepared, models/, metrics/, dvc.lock), so two at once would
interleave writes. Who takes it: `sagan pipeline run` for the whole flow, and each stage command
(`sagan prepare|train|evaluate|register`, so also `dvc repro`, which runs them) for its stage. The
lock is taken in the commands, never in pipelines/stages.py: the flow, which holds it, calls the
stages in-process and so never waits on itself. DDP ranks never take it: the process that launched
them holds it (`sagan train` or the flow; launch.py marks the ranks' environment), and a bare
`torchrun` of `sagan train` has rank 0 take it for all of them. Not reentrant: a second take in
the same process is refused like any other (a clear error, never a hang), except by the flow
(`reentrant=True`) when `sagan pipeline run` took it before starting Prefect's temporary server: a
second run is then refused at once, not after the server's start-up.

The kernel drops the lock when its holder dies (even by kill -9), so a crashed run never leaves a
stale lock behind. The file says who holds it: "pid N on host H since T", the refusal names it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from sagan_core.errors import SaganError

LOCK_FILE = ".sagan/pipeline.lock"
# Set in the environment of DDP ranks whose launching process holds the project lock.
HELD_BY_LAUNCHER = "SAGAN_PROJECT_LOCK_HELD"


_HELD: set[Path] = set()  # lock files `sagan pipeline run` holds for its flow (the reentrant take)


class ProjectBusy(SaganError):
    """Another sagan run holds the project lock."""


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip() or "a process that is just starting"
    return "another process"


@contextlib.contextmanager
def project_lock(
    root: str | Path = ".",
    timeout_s: float = 0.0,
    poll_s: float = 0.2,
    for_flow: bool = False,
    reentrant: bool = False,
) -> Iterator[Path]:
    """Hold the project's lock; wait up to `timeout_s`, then fail naming the holder. `for_flow`:
    taken by `sagan pipeline run` for the flow it runs, whose take (`reentrant`) goes on under it."""
    path = Path(root) / LOCK_FILE
    if reentrant and path.resolve() in _HELD:
        yield path
        return
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
                    raise ProjectBusy(
                        f"another sagan run holds the project lock ({_holder(path)}); wait for it or "
                        "raise pipeline.lock_timeout_s"
                    ) from None
                time.sleep(poll_s)
        since = time.strftime("%Y-%m-%d %H:%M:%S %z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {since}".encode(), 0)
        if not for_flow:
            yield path
            return
        _HELD.add(path.resolve())
        try:
            yield path
        finally:
            _HELD.discard(path.resolve())
    finally:
        os.close(fd)  # closing releases the flock


@contextlib.contextmanager
def stage_lock(timeout_s: float = 0.0) -> Iterator[None]:
    """The project lock for one stage command in the project (the current directory).

    DDP ranks take none when their launcher holds it; under a bare torchrun only rank 0 takes it.
    """
    if "WORLD_SIZE" in os.environ and (
        os.environ.get(HELD_BY_LAUNCHER) or os.environ.get("RANK", "0") != "0"
    ):
        yield
        return
    with project_lock(".", timeout_s):
        yield
