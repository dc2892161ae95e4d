"""`sagan train` as N DDP processes under torchrun (one machine, or train.nnodes machines meeting at
train.rdzv_endpoint), used by `sagan train` and the flow's train task, and `supervised()`: nothing
the command started outlives it.

The ranks read the validated params from a file of this launch's own (two launches never hand
their ranks each other's). The launcher holds the project lock for its ranks (HELD_BY_LAUNCHER).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import psutil
import yaml

from pipelines.lock import HELD_BY_LAUNCHER
from sagan_core.config import Params

LAUNCH_DIR = Path(".sagan/launch")
MARK = "SAGAN_SUPERVISED_BY"  # in the environment of everything a supervised command starts


def distributed(params: Params) -> bool:
    return params.train.nproc_per_node > 1 or params.train.nnodes > 1


def rendezvous_args(params: Params) -> list[str]:
    """One machine: torchrun's --standalone. Several: c10d rendezvous at train.rdzv_endpoint, the
    same arguments on every node (torchrun assigns node ranks; rank 0 is wherever it puts it)."""
    t = params.train
    procs = f"--nproc_per_node={t.nproc_per_node}"
    if t.nnodes == 1:
        return ["--standalone", procs]
    rdzv = ["--rdzv-backend=c10d", f"--rdzv-endpoint={t.rdzv_endpoint}", f"--rdzv-id={t.rdzv_id}"]
    # --max-restarts=0: a lost node ends the run; `sagan train --resume` continues it
    return [f"--nnodes={t.nnodes}", procs, *rdzv, "--max-restarts=0"]


def torchrun_command(params_file: Path, params: Params, resume: bool, quiet: bool) -> list[str]:
    torchrun = [sys.executable, "-m", "torch.distributed.run", *rendezvous_args(params)]
    flags = ["--resume"] * resume + ["--quiet"] * quiet
    return [*torchrun, "-m", "pipelines.cli", "train", "--params", str(params_file), *flags]


# torch's C++ log lines ("[W1202 00:50:03.572 TCPStore.cpp:138] ...") and the C++ stack that follows
# them: what a lost connection prints in every process before the rank's own one-line error.
_CPP_NOISE = re.compile(r"^(\[[WEI]\d{4} |Exception raised from |frame #\d+: |<omitting python frames>)")


class _Filter:
    """Passes the ranks' lines on, holds back torchrun's traceback of a failed rank: a Python
    traceback is kept back until its last line says whose it is. `last`: the last line passed on."""

    def __init__(self, emit: Callable[[str], None]) -> None:
        self.emit, self.held, self.dropping, self.last = emit, [], False, ""

    def __call__(self, line: str) -> None:
        if _CPP_NOISE.match(line):
            return
        # torchrun's own failure report and warnings (the ranks said what went wrong)
        if self.dropping or "torch.distributed.elastic" in line or "torch/distributed/elastic" in line:
            self.dropping = self.dropping or bool(self.held)  # the report runs to the end
            self.held = []
            return
        if line.startswith("Traceback (most recent call last)") or (self.held and line[:1] in " \t"):
            self.held.append(line)
            return
        for kept in [*self.held, line]:
            self.emit(kept)
        self.held, self.last = [], line.strip()


def run_torchrun(
    params: Params, resume: bool, quiet: bool, log: Callable[[str], None], forward: bool = False
) -> tuple[int, str]:
    """Train under torchrun; (exit code, last line the ranks wrote). The ranks' lines go to stderr,
    or to `log` as they come (`forward`: the Prefect log), without torchrun's traceback of a rank."""
    LAUNCH_DIR.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=LAUNCH_DIR, prefix="params-", suffix=".yaml") as params_file:
        yaml.safe_dump(params.model_dump(mode="json"), params_file, sort_keys=False)
        params_file.flush()
        cmd = torchrun_command(Path(params_file.name), params, resume, quiet)
        t = params.train
        where = f" on each of {t.nnodes} nodes (rendezvous {t.rdzv_endpoint})" if t.nnodes > 1 else ""
        log(f"launching {t.nproc_per_node} processes{where}: {' '.join(cmd)}")
        env = os.environ | {HELD_BY_LAUNCHER: str(os.getpid())}  # the ranks take no project lock
        # forward: stdout and stderr as one stream for the log; else stdout stays this process's
        pipes = (subprocess.PIPE, subprocess.STDOUT) if forward else (None, subprocess.PIPE)
        proc = subprocess.Popen(cmd, stdout=pipes[0], stderr=pipes[1], text=True, env=env, bufsize=1)
        keep = _Filter(log if forward else lambda line: print(line, file=sys.stderr, flush=True))
        for line in proc.stdout if forward else proc.stderr:
            if line.strip():
                keep(line.rstrip())
        return proc.wait(), keep.last


def watch(mark: str) -> None:
    """Wait for the command's end; unless it said "done", kill every process carrying its mark."""
    if sys.stdin.read():
        return
    for _ in range(2):  # again: what a dying process started during the first pass
        for proc in psutil.process_iter():
            with suppress(psutil.Error):
                if proc.pid != os.getpid() and proc.environ().get(MARK) == mark:
                    proc.kill()


@contextmanager
def supervised() -> Iterator[None]:
    """Run the body with a watchdog that kills what it started if this process dies (kill -9).

    Prefect starts its temporary server and torchrun its ranks, out of reach of a PR_SET_PDEATHSIG
    of ours; they all inherit MARK. The watchdog, in a session of its own (group kills pass it by),
    learns of the death when the kernel closes its stdin: no polling.
    """
    mark = os.environ[MARK] = uuid.uuid4().hex
    root = str(Path(__file__).resolve().parents[1])  # the watchdog runs this very code
    code = f"import sys; sys.path.insert(0, {root!r}); from pipelines.launch import watch; watch({mark!r})"
    dog = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, start_new_session=True)
    try:
        yield
    finally:
        with suppress(OSError, subprocess.TimeoutExpired):
            dog.communicate(b"done\n", timeout=5)
