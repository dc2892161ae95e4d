"""Background jobs (tracking/uploads.py) run torch on their own thread only.

torch's OpenMP runtime gives each thread that runs a parallel op a team of worker threads; a second
team next to the training loop's made libgomp stop spin-waiting in every team, and the CPU training
step ran ~15% slower for the rest of the run (BENCHMARKS.md, "Background jobs and OpenMP")."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from pipelines.tracking.uploads import Uploader

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def two_torch_threads():
    """Two torch threads whatever the worker's share of the cores (one under `-n 2`): with one there is
    no team to see."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _os_threads() -> int:
    return len(os.listdir("/proc/self/task"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux /proc")
def test_a_job_runs_torch_without_a_thread_team_and_leaves_the_trainers_threads_alone():
    threads_before = torch.get_num_threads()
    seen: dict[str, int] = {}

    def job():
        seen["torch_threads"] = torch.get_num_threads()
        before = _os_threads()
        a = torch.randn(512, 512)
        for _ in range(3):  # large enough for torch to split it across its threads
            a = (a @ a).tanh()
        seen["new_os_threads"] = _os_threads() - before

    uploads = Uploader()
    uploads.submit("a job that runs torch", job)
    assert uploads.close() == []
    assert seen == {"torch_threads": 1, "new_os_threads": 0}
    # the calling (training) thread keeps its count, and threads that start later get the default
    assert torch.get_num_threads() == threads_before
    plain = threading.Thread(target=lambda: seen.update(plain=torch.get_num_threads()))
    plain.start()
    plain.join()
    assert seen["plain"] == threads_before


SEES_A_TEAM = """
import os, threading, torch
torch.set_num_threads(2)
seen = {}
def work():
    before = len(os.listdir("/proc/self/task"))
    a = torch.randn(512, 512)
    for _ in range(3):
        a = (a @ a).tanh()
    seen["new_os_threads"] = len(os.listdir("/proc/self/task")) - before
plain = threading.Thread(target=work)  # it ends here, and its team with it
plain.start()
plain.join()
print(seen["new_os_threads"])
"""


@pytest.mark.e2e  # a fresh process: a long-lived pytest worker's idle OpenMP threads could serve the team
@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux /proc")
def test_the_thread_count_sees_a_team():
    """The measurement above is sensitive: the same work on a plain thread starts a team."""
    env = os.environ | {"OMP_NUM_THREADS": "2"}
    r = subprocess.run(
        [sys.executable, "-c", SEES_A_TEAM], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout.strip()) >= 1, r.stdout
