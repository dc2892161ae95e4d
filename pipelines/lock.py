"""One sagan run per project (a file lock on `.sagan/pipeline.lock`), one alias decision per model.

The stage commands take the project lock, never pipelines/stages.py: the flow holds it and calls the
stages in-process. DDP ranks take none: their launcher (HELD_BY_LAUNCHER) or, under a bare torchrun,
rank 0 holds it. `sagan pipeline run` takes it before Prefect's temporary server starts; its flow's
take is reentrant. The kernel drops the lock when its holder dies; the file names the holder.
A file lock reaches one machine: a deployment's run also holds a Prefect global concurrency limit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from sagan_core.errors import SaganError

LOCK_FILE = ".sagan/pipeline.lock"
HELD_BY_LAUNCHER = "SAGAN_PROJECT_LOCK_HELD"  # in the environment of ranks whose launcher holds it
PROMOTION_WAIT_S = 120.0  # an alias decision takes < 1 s; a register waits this long for another's
_HELD: set[Path] = set()  # lock files `sagan pipeline run` holds for its flow (the reentrant take)


class ProjectBusy(SaganError):
    """Another sagan run holds the project lock."""


def _sign(fd: int) -> None:
    since = time.strftime("%Y-%m-%d %H:%M:%S %z")
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()} since {since}".encode(), 0)


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text().strip() or "a process that is just starting"
    return "another process"


@contextlib.contextmanager
def project_lock(
    root: str | Path = ".", timeout_s: float = 0.0, for_flow: bool = False, reentrant: bool = False
) -> Iterator[Path]:
    """Hold the project's lock, waiting up to `timeout_s`; `for_flow`: the flow's `reentrant` take nests."""
    relative = Path(root) / LOCK_FILE  # an error creating it names the path as the user knows it
    path = relative.resolve()
    if reentrant and path in _HELD:
        yield path
        return
    relative.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=timeout_s, on_acquired=_sign)
    try:
        lock.acquire()
    except Timeout:
        raise ProjectBusy(
            f"another sagan run holds the project lock ({_holder(path)}); wait for it or raise "
            "pipeline.lock_timeout_s"
        ) from None
    try:
        if for_flow:
            _HELD.add(path)
        yield path
    finally:
        if for_flow:
            _HELD.discard(path)
        lock.release()


def stage_lock(timeout_s: float = 0.0) -> contextlib.AbstractContextManager:
    """The project lock for one stage command in the current directory (none for DDP ranks)."""
    rank = "WORLD_SIZE" in os.environ and (
        os.environ.get(HELD_BY_LAUNCHER) or os.environ.get("RANK", "0") != "0"
    )
    return contextlib.nullcontext() if rank else project_lock(".", timeout_s)


def limit_name(project_dir: str | Path) -> str:
    return f"sagan-project-{hashlib.sha256(str(Path(project_dir).resolve()).encode()).hexdigest()[:12]}"


def ensure_limit(name: str) -> str:
    """The one-slot limit `name` on the Prefect server (upsert keeps its active slots)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    return name


@contextlib.contextmanager
def prefect_slot(name: str, timeout_s: float, busy: str) -> Iterator[None]:
    """Hold the Prefect limit `name` in a deployment's run; a no-op elsewhere: a temporary server
    dies with its run and could guard nothing."""
    if "prefect" not in sys.modules:  # no flow run in this process (a CLI command)
        yield
        return
    from prefect.concurrency.sync import concurrency
    from prefect.runtime import deployment

    if deployment.id is None:
        yield
        return
    wait = max(timeout_s, 1.0)
    with contextlib.ExitStack() as held:
        try:  # strict: a limit that vanished must not be skipped silently
            held.enter_context(concurrency(ensure_limit(name), occupy=1, timeout_seconds=wait, strict=True))
        except TimeoutError:
            raise SaganError(f"{busy}; waited {wait:g} s for Prefect concurrency limit {name}") from None
        yield


def project_slot(root: str | Path, timeout_s: float) -> contextlib.AbstractContextManager[None]:
    busy = (
        f"another flow run holds this project ({Path(root).resolve()}); raise pipeline.lock_timeout_s to wait"
    )
    return prefect_slot(limit_name(root), timeout_s, busy)


@contextlib.contextmanager
def promotion_lock(store: str, model: str) -> Iterator[None]:
    """Alias decisions on `model` of tracking `store` one at a time (aliases have no compare-and-set):
    this machine's by a file lock, a deployment's workers anywhere by a Prefect limit too. Two CLI
    registers on two machines are not serialised (the registry offers no lock)."""
    key = hashlib.sha256(f"{store}\n{model}".encode()).hexdigest()[:12]
    busy = f"registry: another `sagan register` is still deciding the aliases of {model!r}; rerun later"
    lock = FileLock(Path(tempfile.gettempdir()) / f"sagan-promotion-{os.getuid()}-{key}.lock")
    try:
        held = lock.acquire(timeout=PROMOTION_WAIT_S)
    except Timeout:
        raise SaganError(f"{busy}; waited {PROMOTION_WAIT_S:g} s") from None
    with held, prefect_slot(f"sagan-promotion-{key}", PROMOTION_WAIT_S, busy):
        yield
