"""One sagan run per project: a file lock on `.sagan/pipeline.lock`; one alias decision per model.

Runs share data/prepared, models/, metrics/ and dvc.lock. The stage commands take the project lock
(so `dvc repro` does), never pipelines/stages.py: the flow holds it and calls the stages in-process.
DDP ranks take none: their launcher holds it (HELD_BY_LAUNCHER), under a bare torchrun rank 0 does.
A second take in one process is refused, except the flow's (`reentrant`) under `sagan pipeline run`,
which took it before Prefect's temporary server starts (a second run is refused at once). The kernel
drops the lock when its holder dies, even by kill -9; the file names the holder for the refusal.
A file lock reaches one machine only: a deployment's run, whose workers may be anywhere, also holds
a Prefect global concurrency limit (`prefect_slot`). A temporary server dies with its run and could
guard nothing, so `sagan pipeline run` and the CLI commands rely on the file lock alone.
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
    """Hold the project's lock; wait up to `timeout_s`, then fail naming the holder. `for_flow`:
    taken by `sagan pipeline run` for its flow, whose take (`reentrant`) goes on under it."""
    path = (Path(root) / LOCK_FILE).resolve()
    if reentrant and path in _HELD:
        yield path
        return
    path.parent.mkdir(parents=True, exist_ok=True)
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


@contextlib.contextmanager
def stage_lock(timeout_s: float = 0.0) -> Iterator[None]:
    """The project lock for one stage command in the current directory (none for DDP ranks)."""
    if "WORLD_SIZE" in os.environ and (
        os.environ.get(HELD_BY_LAUNCHER) or os.environ.get("RANK", "0") != "0"
    ):
        yield
        return
    with project_lock(".", timeout_s):
        yield


def limit_name(project_dir: str | Path) -> str:
    """The project's Prefect global concurrency limit (`prefect gcl ls` lists it)."""
    return f"sagan-project-{hashlib.sha256(str(Path(project_dir).resolve()).encode()).hexdigest()[:12]}"


def ensure_limit(name: str) -> str:
    """The one-slot limit `name` on the configured Prefect server (upsert keeps its active slots)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(name, 1)
    return name


@contextlib.contextmanager
def prefect_slot(name: str, timeout_s: float, busy: str) -> Iterator[None]:
    """Hold the one-slot Prefect limit `name` while a deployment's run works (else a no-op)."""
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
    """Alias decisions on registered model `model` of tracking store `store` (no credentials in it)
    one at a time: MLflow aliases have no compare-and-set. The file lock serialises this machine's
    registers, promotions and rollbacks; a deployment's run also holds a Prefect limit, which
    serialises workers on other machines. Two CLI registers on two machines are not serialised."""
    key = hashlib.sha256(f"{store}\n{model}".encode()).hexdigest()[:12]
    busy = f"registry: another `sagan register` is still deciding the aliases of {model!r}; rerun later"
    lock = FileLock(Path(tempfile.gettempdir()) / f"sagan-promotion-{os.getuid()}-{key}.lock")
    try:
        lock.acquire(timeout=PROMOTION_WAIT_S)
    except Timeout:
        raise SaganError(f"{busy}; waited {PROMOTION_WAIT_S:g} s") from None
    try:
        with prefect_slot(f"sagan-promotion-{key}", PROMOTION_WAIT_S, busy):
            yield
    finally:
        lock.release()
