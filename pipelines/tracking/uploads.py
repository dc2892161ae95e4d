"""Checkpoint uploads that never block a training step: one background thread, in order.

A job reads a snapshot (a hard link, else a copy) so the trainer can replace the file at once; a
failure is retried with backoff, then reported once (training goes on; `sagan register` uploads
the registered checkpoint again). When several uploads of one file wait, only the newest is sent.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipelines.tracking.store import scrub

log = logging.getLogger("sagan.mlflow")

CHECKPOINT_DIR = "checkpoint"  # the run's artifact folder of checkpoints (fetch_checkpoint.py downloads)


def snapshot(path: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix=".upload-", dir=path.parent)) / path.name
    try:
        os.link(path, target)
    except OSError:  # another file system, or links not supported
        shutil.copy2(path, target)
    return target


class Uploader:
    """One background worker: `submit` never blocks, `close` waits for what is queued."""

    def __init__(self, retries: int = 3, delay_s: float = 1.0):  # attempts after the first; doubles each
        self.retries, self.delay_s, self.failures = retries, delay_s, []
        self.latest: dict[str, int] = {}  # coalescing key -> newest ticket
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="sagan-uploads")

    def submit(self, what: str, job: Callable[[], None], snap: Path | None = None, key: str | None = None):
        """Queue `job` (it reads `snap`, removed afterwards); a newer job of the same `key` replaces it."""
        ticket = self.latest[key] = self.latest.get(key, 0) + 1
        self.pool.submit(self._run, what, job, snap, key, ticket)

    def _run(self, what: str, job: Callable[[], None], snap: Path | None, key: str | None, ticket: int) -> None:
        try:
            for attempt in range(self.retries + 1):
                if key and self.latest[key] != ticket:  # a newer one is queued
                    return
                try:
                    return job()
                except Exception as e:  # noqa: BLE001 - uploads never stop training
                    if attempt == self.retries:
                        self.failures.append(f"{what}: {scrub(str(e))}")
                        log.warning("MLflow: %s failed after %d attempts: %s", what, attempt + 1, scrub(str(e)))
                    else:
                        time.sleep(self.delay_s * 2**attempt)
        finally:
            if snap is not None:
                shutil.rmtree(snap.parent, ignore_errors=True)

    def close(self) -> list[str]:
        """Wait for every queued job; returns the failures (one line each)."""
        self.pool.shutdown(wait=True)
        return self.failures
