"""Processes the pipeline starts: `sagan train` as N DDP processes under torchrun (on one machine,
or on each of train.nnodes machines meeting at train.rdzv_endpoint), and the watchdog that makes
sure none of them outlives the command that started it.

The one launcher, used by `sagan train` (train.nproc_per_node > 1 or train.nnodes > 1) and by the
flow's train task.
The N processes read the already validated params from a file written here (no argv travels
through globals), so every rank trains exactly what the parent validated. The file is this
launch's own (`.sagan/launch/params-<pid>-<random>.yaml`, removed when torchrun returns): two
launches never hand their ranks each other's params. The launcher holds the project lock
(pipelines/lock.py) for its ranks, which it tells so through their environment.

`supervised()`: a kill -9 of `sagan pipeline run` runs no cleanup code in it, so Prefect's
temporary server (uvicorn, started by Prefect itself) and torchrun with its ranks (in sessions of
their own) would live on as orphans. A small watchdog process, started first and in a session of
its own (terminal signals and group kills pass it by), records the command's descendants every
0.2 s; when the command dies without saying "done", it SIGKILLs every recorded process still alive
(same pid and start time) with all of its descendants. Linux /proc only; elsewhere it does nothing.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import yaml

from pipelines.lock import HELD_BY_LAUNCHER
from sagan_core.atomic import write_atomic
from sagan_core.config import Params

LAUNCH_DIR = Path(".sagan/launch")


def launch_params_file() -> Path:
    """A params file name no other launch uses (this process's pid and a random part)."""
    return LAUNCH_DIR / f"params-{os.getpid()}-{uuid.uuid4().hex[:12]}.yaml"


def distributed(params: Params) -> bool:
    """Whether `sagan train` runs as several processes (on this machine or several)."""
    return params.train.nproc_per_node > 1 or params.train.nnodes > 1


def rendezvous_args(params: Params) -> list[str]:
    """One machine: torchrun's --standalone. Several: c10d rendezvous at train.rdzv_endpoint, the
    same arguments on every node (torchrun assigns node ranks; rank 0 is wherever it puts it)."""
    t = params.train
    if t.nnodes == 1:
        return ["--standalone", f"--nproc_per_node={t.nproc_per_node}"]
    return [
        f"--nnodes={t.nnodes}",
        f"--nproc_per_node={t.nproc_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={t.rdzv_endpoint}",
        f"--rdzv-id={t.rdzv_id}",
        "--max-restarts=0",  # a lost node ends the run; `sagan train --resume` continues it
    ]


def torchrun_command(params_file: Path, params: Params, resume: bool, quiet: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *rendezvous_args(params),
        "-m",
        "pipelines.cli",
        "train",
        "--params",
        str(params_file),
        *(["--resume"] if resume else []),
        *(["--quiet"] if quiet else []),
    ]


# torch's C++ log lines ("[W1202 00:50:03.572 TCPStore.cpp:138] ...") and the C++ stack that follows
# them: what a lost connection prints in every process before the rank's own one-line error.
_CPP_NOISE = re.compile(r"^(\[[WEI]\d{4} |Exception raised from |frame #\d+: |<omitting python frames>)")


def _torchrun_report(line: str) -> bool:
    """Lines of torchrun's own failure report and warnings (the ranks said what went wrong)."""
    return "torch.distributed.elastic" in line or "torch/distributed/elastic" in line


class _Filter:
    """Passes the ranks' lines on, holds back torchrun's traceback of a failed rank: a Python
    traceback is kept back until its last line says whose it is."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit, self.held, self.dropping = emit, [], False

    def __call__(self, line: str) -> None:
        if _CPP_NOISE.match(line):
            return
        if self.dropping or _torchrun_report(line):
            self.dropping = self.dropping or bool(self.held)  # the report runs to the end
            self.held = []
            return
        if line.startswith("Traceback (most recent call last)") or (self.held and line[:1] in " \t"):
            self.held.append(line)
            return
        for kept in [*self.held, line]:
            self.emit(kept)
        self.held = []


def run_torchrun(
    params: Params, resume: bool, quiet: bool, log: Callable[[str], None], forward: bool = False
) -> tuple[int, str]:
    """Train under torchrun; returns (exit code, last line the ranks wrote).

    forward=False: the ranks' output goes to this process's stderr; forward=True: it is handed to
    `log` line by line as it comes (the Prefect log shows live progress). Either way torchrun's own
    traceback of a failed rank is left out: the rank's one-line error says what happened.
    """
    text = yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
    params_file = launch_params_file()
    write_atomic(params_file, lambda f: f.write(text.encode()))
    try:
        cmd = torchrun_command(params_file, params, resume, quiet)
        t = params.train
        where = f" on each of {t.nnodes} nodes (rendezvous {t.rdzv_endpoint})" if t.nnodes > 1 else ""
        log(f"launching {t.nproc_per_node} processes{where}: {' '.join(cmd)}")
        env = os.environ | {HELD_BY_LAUNCHER: str(os.getpid())}  # the ranks take no project lock
        # forward: stdout and stderr as one stream for the log; else stdout stays this process's
        pipes = (subprocess.PIPE, subprocess.STDOUT) if forward else (None, subprocess.PIPE)
        proc = subprocess.Popen(cmd, stdout=pipes[0], stderr=pipes[1], text=True, env=env, bufsize=1)
        last = ""

        def emit(line: str) -> None:
            nonlocal last
            last = line.strip() or last
            if forward:
                log(line.rstrip())
            else:
                sys.stderr.write(line if line.endswith("\n") else line + "\n")
                sys.stderr.flush()

        keep = _Filter(emit)
        for line in proc.stdout if forward else proc.stderr:
            if line.strip():
                keep(line.rstrip("\n"))
        return proc.wait(), last
    finally:
        params_file.unlink(missing_ok=True)


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        with suppress(OSError, ValueError):
            kids += [int(k) for k in f.read_text().split()]
    return kids


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): with the pid, its identity."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _tree(root: int) -> dict[int, str]:
    """root's descendants now, as pid -> start time."""
    found: dict[int, str] = {}
    todo = _children(root)
    while todo:
        pid = todo.pop()
        start = _start_time(pid)
        if pid not in found and start is not None:
            found[pid] = start
            todo += _children(pid)
    return found


def watch(parent: int) -> None:
    """The watchdog's loop (see the module docstring); `parent` writes "done" when it ends normally."""
    me, before = os.getpid(), _tree(parent)  # already there (a test's server): not ours to kill
    seen: dict[int, str] = {}
    while os.getppid() == parent:
        if select.select([sys.stdin], [], [], 0.2)[0]:
            if sys.stdin.readline():
                return  # "done": the command ended on its own and cleans up after itself
            break  # EOF: the command died
        now = _tree(parent)
        if os.getppid() != parent:  # it died during the walk: the walk may be partial
            break
        seen |= {p: s for p, s in now.items() if p != me and before.get(p) != s}
    # Collect the whole forest first: once a parent is killed its children are reparented.
    doomed = {p: s for p, s in seen.items() if _start_time(p) == s}
    for pid in list(doomed):
        doomed |= _tree(pid)
    for pid, start in doomed.items():
        if _start_time(pid) == start:
            with suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@contextmanager
def supervised() -> Iterator[None]:
    """Run the body with a watchdog that kills what it started if this process dies (kill -9)."""
    if not Path("/proc/self/task").is_dir():
        yield
        return
    root = str(Path(__file__).resolve().parents[1])  # the watchdog runs this very code
    code = (
        f"import sys; sys.path.insert(0, {root!r}); from pipelines.launch import watch; watch({os.getpid()})"
    )
    dog = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, start_new_session=True)
    try:
        yield
    finally:
        with suppress(OSError):
            dog.stdin.write(b"done\n")
            dog.stdin.close()
        with suppress(subprocess.TimeoutExpired):
            dog.wait(timeout=5)
