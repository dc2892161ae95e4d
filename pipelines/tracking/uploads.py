"""Uploads that must never block a training step: each checkpoint, and each best checkpoint's
generator as a LoggedModel linked to its KID/FID.

One background thread runs the jobs in order. A job works on a snapshot (a hard link, or a copy
where links are not possible, in a temporary folder), so the trainer can replace checkpoint.pt or
best.pt at once; the local files are never touched. A failed job is retried with exponential backoff
and then reported once (training goes on: the run can still be completed by `sagan register`).
Checkpoint uploads coalesce: when several are waiting, only the newest is sent.

Jobs run torch on one intra-op thread (`one_torch_thread`). Logging a generator runs torch (export,
the input-example check), and torch's OpenMP runtime gives every thread that runs a parallel op its
own team of workers. A second team on a 2-core machine made libgomp count more busy threads than
cores and stop spin-waiting for good, in every team: the CPU training step ran ~15% slower for the
rest of the run after the first best checkpoint (BENCHMARKS.md, "Background jobs and OpenMP").
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.tracking.store import scrub

log = logging.getLogger("sagan.mlflow")

RETRIES = 3  # attempts after the first
RETRY_DELAY_S = 1.0  # doubles per attempt


def snapshot(path: Path, name: str) -> Path:
    """`path` frozen as `<tmpdir>/<name>`: a hard link (free, same inode), else a copy."""
    folder = Path(tempfile.mkdtemp(prefix=".upload-", dir=path.parent))
    target = folder / name
    try:
        os.link(path, target)
    except OSError:  # another file system, or links not supported
        shutil.copy2(path, target)
    return target


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """torch ops in this block run on the calling thread only (no OpenMP team of its own).

    `torch.set_num_threads` sets the calling thread's OpenMP count and the default that threads
    starting later pick up; threads already running torch (the training loop) keep theirs. The
    default is put back at the end."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class Uploader:
    """A background worker; `submit` never blocks, `close` waits for what is queued."""

    def __init__(self, retries: int = RETRIES, delay_s: float = RETRY_DELAY_S):
        self.retries, self.delay_s = retries, delay_s
        self.jobs: queue.Queue = queue.Queue()
        self.failures: list[str] = []
        self.latest: dict[str, int] = {}  # coalescing key -> newest ticket
        self.thread = threading.Thread(target=self._work, name="sagan-uploads", daemon=True)
        self.thread.start()

    def submit(self, what: str, job: Callable[[], None], snap: Path | None = None, key: str | None = None):
        """Queue `job` (it reads `snap`, removed afterwards); with `key`, older queued jobs of the
        same key are dropped."""
        ticket = self.latest.get(key, 0) + 1 if key else 0
        if key:
            self.latest[key] = ticket
        self.jobs.put((what, job, snap, key, ticket))

    def _work(self) -> None:
        while True:
            item = self.jobs.get()
            if item is None:
                self.jobs.task_done()
                return
            what, job, snap, key, ticket = item
            try:
                if not key or self.latest.get(key) == ticket:  # a newer one is queued: skip
                    self._run(what, job)
            finally:
                if snap is not None:
                    shutil.rmtree(snap.parent, ignore_errors=True)
                self.jobs.task_done()

    def _run(self, what: str, job: Callable[[], None]) -> None:
        for attempt in range(self.retries + 1):
            try:
                with one_torch_thread():
                    job()
                return
            except Exception as e:  # noqa: BLE001 - uploads never stop training
                if attempt == self.retries:
                    self.failures.append(f"{what}: {scrub(str(e))}")
                    log.warning("MLflow: %s failed after %d attempts: %s", what, attempt + 1, scrub(str(e)))
                    return
                time.sleep(self.delay_s * 2**attempt)

    def close(self) -> list[str]:
        """Wait for every queued job; returns the failures (one line each)."""
        self.jobs.put(None)
        self.thread.join()
        return self.failures
