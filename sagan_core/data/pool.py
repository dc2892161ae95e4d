"""An in-order worker pool with a bounded number in flight; a worker that dies is one line naming
the file it was on. Serves prepare's decoding and `sagan fid`'s folder reading."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from sagan_core.errors import SaganError

_progress: Any = None  # in a pool worker: the parent's shared array of (pid, item + 1) per slot
_slot = 0  # the slot of the chunk this worker is on


def marked(items: list) -> Iterator:
    """The items of a chunk, each recorded as the one this worker is on before it is handed out."""
    for i, item in enumerate(items):
        if _progress is not None:
            _progress[2 * _slot], _progress[2 * _slot + 1] = os.getpid(), i + 1
        yield item


def _init_pool(progress: Any, init: Callable | None, initargs: tuple) -> None:
    global _progress
    _progress = progress
    if init is not None:
        init(*initargs)


def _run(fn: Callable, slot: int, item: Any) -> Any:
    global _slot
    _slot = slot
    return fn(item)


def in_order(
    fn: Callable, items: Any, workers: int, name: Callable[[int, int], str], init=None, initargs=()
) -> Iterator:
    """fn(item) for each item in `workers` processes, results in order, at most 2 per worker in
    flight: `imap`/`Executor.map` submit every item at once, so results pile up in memory while the
    consumer is slower. A worker that dies is a SaganError naming its file, `name(chunk, index)`.
    forkserver, not fork: the Prefect flow runs prepare next to its threads, and forking a threaded
    process can deadlock. An executor, not Pool: Pool leaves a dead worker's task waiting forever."""
    if workers <= 1:
        if init is not None:
            init(*initargs)
        yield from map(fn, items)
        return
    ahead = 2 * workers
    ctx = mp.get_context("forkserver")
    progress = ctx.RawArray("q", 2 * ahead)  # slot = chunk number % ahead: unique while in flight
    pool = ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_pool, initargs=(progress, init, initargs)
    )
    pending: deque[tuple[int, Future]] = deque()
    procs: dict[int, Any] = {}  # pid -> Process: the exit code tells the dead worker from the stopped
    try:
        for seq, item in enumerate(items):
            progress[2 * (seq % ahead)] = progress[2 * (seq % ahead) + 1] = 0
            pending.append((seq, pool.submit(_run, fn, seq % ahead, item)))
            procs.update((p.pid, p) for p in mp.active_children())  # workers start on submit
            if len(pending) >= ahead:  # the oldest result (a worker's own exception is raised as is)
                yield pending[0][1].result()
                pending.popleft()
        while pending:
            yield pending[0][1].result()
            pending.popleft()
    except BrokenProcessPool:
        raise SaganError(_death(pool, pending, progress, name, procs)) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _death(pool: ProcessPoolExecutor, pending: deque, progress: Any, name: Callable, procs: dict) -> str:
    """The one line for a worker that died: how, and the file it was on (each worker records its pid
    and item; the executor stops the others with SIGTERM)."""
    pool.shutdown(wait=True)  # the executor has joined its workers: exit codes are final
    ahead = len(progress) // 2
    on: list[tuple[str, int | None]] = []
    for seq, fut in pending:
        pid, i = progress[2 * (seq % ahead)], progress[2 * (seq % ahead) + 1]
        broken = fut.done() and not fut.cancelled() and isinstance(fut.exception(), BrokenProcessPool)
        if pid and i and broken:
            on.append((name(seq, i - 1), procs[pid].exitcode if pid in procs else None))
    culprits = [(f, c) for f, c in on if c != -signal.SIGTERM] or on  # the rest got the pool's SIGTERM
    code = culprits[0][1] if culprits else None
    how = f"exit code {code}" if code is None or code >= 0 else f"killed by {signal.Signals(-code).name}"
    files = " or ".join(f for f, _ in culprits[:4]) if culprits else "none (it died between files)"
    return (
        f"a decoding worker process died ({how}) while decoding: {files}. Nothing was written; if "
        f"the system killed it for memory, lower data.workers or data.max_pixels, or remove the file"
    )


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # macOS
