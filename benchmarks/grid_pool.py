"""The subprocess pool of benchmarks/cifar_grid.py: N `sagan train` runs at a time, one log file each,
progress lines read from those logs, and a time budget after which unfinished runs are stopped.

A job is a command, its log and its number in the grid; `run_pool` starts the queued jobs, at most
`jobs` at once, each in a process session of its own with `OMP_NUM_THREADS` set, and records how each
ended: "ok", "failed" (non-zero exit: the log says why) or "stopped" (the budget ran out, or the grid
was interrupted or terminated: `sagan train --resume` continues it bit-exactly on the next invocation). Not part of
the product.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

STEP = re.compile(r"step (\d+)/(\d+)")
# Popen's process_group is Python 3.11+; pyproject allows 3.10
OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}


@dataclass
class Job:
    index: int  # 1-based number in the grid (the same in every invocation)
    total: int
    label: str  # "variant seed fraction", for progress lines
    cmd: list[str]
    cwd: Path
    log: Path
    steps: int
    run: dict = field(default_factory=dict)  # the grid's record of the run (cifar_quality.grid_runs)
    start_step: int = 0  # where this invocation's training starts (resumed runs: the checkpoint's step)
    status: str = "queued"  # queued | skipped (finished earlier) | running | ok | failed | stopped
    returncode: int | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    t0: float = 0.0
    step: int = 0
    shown: int = -1  # the step of the last progress line printed

    @property
    def prefix(self) -> str:
        return f"[{self.index}/{self.total}] {self.label}"


def last_step(log: Path, tail: int = 4096) -> int | None:
    """The step of the last `step N/M` line in the log (the trainer's non-tty progress line)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            found = STEP.findall(f.read().decode("utf-8", "replace"))
    except OSError:
        return None
    return int(found[-1][0]) if found else None


def eta(job: Job, now: float) -> str:
    done = job.step - job.start_step
    if done <= 0:
        return "eta ?"
    left = (now - job.t0) / done * (job.steps - job.step)
    return f"eta {int(left // 60)}m{int(left % 60):02d}s"


def start(job: Job, threads: int, env: dict[str, str]) -> None:
    job.log.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log, "a") as log:
        log.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(job.cmd)}\n")
        log.flush()
        job.proc = subprocess.Popen(
            job.cmd,
            cwd=job.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env | {"OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"},
            **OWN_GROUP,  # its own process group, stopped as a whole (stop()); not its own session
        )
    job.status, job.t0, job.step, job.shown = "running", time.monotonic(), job.start_step, job.start_step


def stop(job: Job, grace_s: float = 20.0) -> None:
    """SIGTERM the job's process group, SIGKILL after `grace_s`; checkpoints are written atomically,
    so the last one (every train.checkpoint_every steps) stays usable for --resume."""
    if job.proc is None or job.proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(job.proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            job.proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    job.status = "stopped"


def _reap(job: Job, say: Callable[[str], None]) -> bool:
    """True when the running job has ended (its status then says how)."""
    rc = job.proc.poll()
    if rc is None:
        return False
    job.returncode, job.step = rc, last_step(job.log) or job.step
    job.status = "ok" if rc == 0 else "failed"
    took = time.monotonic() - job.t0
    what = "done" if rc == 0 else f"FAILED (exit {rc}; log {job.log})"
    say(f"{job.prefix}: {what} at step {job.step}/{job.steps} after {took:.0f} s")
    return True


def _progress(running: list[Job], say: Callable[[str], None]) -> None:
    now = time.monotonic()
    for job in running:
        job.step = last_step(job.log) or job.step
        if job.step != job.shown:
            job.shown = job.step
            say(f"{job.prefix}: step {job.step}/{job.steps}, {eta(job, now)}")


def run_pool(
    jobs: list[Job],
    parallel: int,
    threads: int,
    env: dict[str, str],
    budget_s: float | None = None,
    progress_s: float = 60.0,
    say: Callable[[str], None] = print,
) -> None:
    """Run every queued job, `parallel` at a time; stop the unfinished ones once `budget_s` seconds
    (from now) have passed, and all of them on KeyboardInterrupt (re-raised)."""
    queue = [j for j in jobs if j.status == "queued"]
    running: list[Job] = []
    t_start, last_progress = time.monotonic(), 0.0
    try:
        while queue or running:
            over = budget_s is not None and time.monotonic() - t_start > budget_s
            if over:
                say(f"time budget of {budget_s:.0f} s spent: stopping {len(running)} runs (resumable)")
                for job in running:
                    stop(job)
                for job in queue:
                    job.status = "stopped"
                return
            while queue and len(running) < parallel:
                job = queue.pop(0)
                start(job, threads, env)
                resumed = f" (resuming from step {job.start_step})" if job.start_step else ""
                say(f"{job.prefix}: started{resumed}, log {job.log}")
                running.append(job)
            running = [j for j in running if not _reap(j, say)]
            if time.monotonic() - last_progress >= progress_s:
                last_progress = time.monotonic()
                _progress(running, say)
            time.sleep(0.2)
    except BaseException:
        for job in running:
            stop(job, grace_s=5.0)
        raise
