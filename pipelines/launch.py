"""Multi-process training: `sagan train` as N DDP processes under torchrun.

The one launcher, used by `sagan train` (train.nproc_per_node > 1) and by the flow's train task.
The N processes read the already validated params from a file written here (no argv travels
through globals), so every rank trains exactly what the parent validated.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from sagan_core.atomic import write_atomic
from sagan_core.config import Params

LAUNCH_PARAMS = Path(".sagan/launch/params.yaml")


def torchrun_command(params_file: Path, nproc: int, resume: bool, quiet: bool) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "pipelines.cli",
        "train",
        "--params",
        str(params_file),
        *(["--resume"] if resume else []),
        *(["--quiet"] if quiet else []),
    ]


def run_torchrun(
    params: Params, resume: bool, quiet: bool, log: Callable[[str], None], forward: bool = False
) -> tuple[int, str]:
    """Train under torchrun; returns (exit code, last output line).

    forward=False: the processes print to this process's terminal. forward=True: their output is
    read line by line and handed to `log` as it comes (the Prefect log shows live progress).
    """
    text = yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False)
    write_atomic(LAUNCH_PARAMS, lambda f: f.write(text.encode()))
    cmd = torchrun_command(LAUNCH_PARAMS, params.train.nproc_per_node, resume, quiet)
    log(f"launching {params.train.nproc_per_node} processes: {' '.join(cmd)}")
    if not forward:
        return subprocess.run(cmd).returncode, ""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last = ""
    for line in proc.stdout:
        if line.strip():
            last = line.strip()
            log(last)
    return proc.wait(), last
