"""What a killed process leaves behind: `sagan train` removes the temp files of atomic writes that a
kill -9 interrupted (and only those), and kill -9 of `sagan pipeline run` leaves none of the processes
it started (Prefect's temporary server, the training ranks) running."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import time

import psutil
import pytest
from helpers import REPO, SAGAN, checkpoint_step, pipeline_project, run_cli

pytestmark = pytest.mark.e2e


def test_train_removes_stale_temp_files_of_interrupted_writes(tmp_path, prepared_demo):
    proj = pipeline_project(tmp_path / "p", dvc=False, train__steps=2)
    shutil.copytree(prepared_demo, proj / "data/prepared")
    models = proj / "models"
    models.mkdir()
    stale = models / ".checkpoint.pt.k1ll3d.tmp"  # what a kill -9 inside write_atomic leaves
    stale.write_bytes(b"half a checkpoint")
    held = models / ".checkpoint.pt.l1ve.tmp"  # another process's write in progress: not ours
    held.write_bytes(b"being written")
    past = time.time() - 3600
    for p in (stale, held):
        os.utime(p, (past, past))
    other = models / "notes.tmp"  # not the writer's pattern: untouched
    other.write_text("mine")
    with open(held, "rb"):
        r = run_cli(["train", "--quiet"], cwd=proj, env={"SAGAN_TRACKING": "0"})
    assert r.returncode == 0, r.stderr
    assert not stale.exists() and held.exists() and other.exists()
    assert sum("stale temp file" in line for line in r.stderr.splitlines()) == 1, r.stderr
    assert checkpoint_step(models / "checkpoint.pt") == 2
    assert sorted(p.name for p in models.glob(".*.tmp")) == [held.name]


def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:  # gone, or a zombie, since it was listed
        return ""


def _alive(procs: list[psutil.Process]) -> list[str]:
    """Those still running (a zombie awaiting its reaper is dead), as 'pid cmdline' for messages."""
    left = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {_cmdline(p)[:120]}")
    return left


def test_kill9_of_pipeline_run_leaves_no_process_behind(tmp_path):
    """A whole `sagan pipeline run` with 2 training ranks, killed (~20 s): its Prefect server,
    torchrun and the ranks all end (one rank would start a subset of these processes: the server)."""
    nproc = 2
    proj = pipeline_project(tmp_path / "p", dvc=False, train__steps=100000, train__nproc_per_node=nproc)
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # Prefect's temporary server
    env |= {"PYTHONPATH": str(REPO), "PREFECT_HOME": str(tmp_path / "prefect"), "SAGAN_TRACKING": "1"}
    env |= {"MLFLOW_TRACKING_URI": f"sqlite:///{proj}/mlflow.db"}
    proc = subprocess.Popen([*SAGAN, "pipeline", "run"], cwd=proj, env=env, stdout=subprocess.DEVNULL)
    descendants: list[psutil.Process] = []
    try:
        ranks = []
        deadline = time.monotonic() + 400
        while len(ranks) < nproc or not (proj / "models/checkpoint.pt").exists():
            assert proc.poll() is None, "the pipeline ended before it could be killed"
            assert time.monotonic() < deadline, "training never got underway"
            time.sleep(0.2)
            descendants = psutil.Process(proc.pid).children(recursive=True)
            ranks = [p for p in descendants if "pipelines.cli train" in _cmdline(p)]
        cmdlines = [_cmdline(p) for p in descendants]
        assert any("uvicorn" in c for c in cmdlines), cmdlines  # the temporary server is ours
        assert any("torch.distributed.run" in c for c in cmdlines), cmdlines
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while _alive(descendants) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(descendants) == []
    finally:
        proc.kill()
        proc.wait()
        for p in descendants:  # stragglers of a failed run must not outlive the test either
            with contextlib.suppress(psutil.Error):
                p.kill()
    # The next run's start marks what the killed one left RUNNING (issue 31: RUNNING forever): its
    # flow and task runs Crashed, its MLflow run KILLED. It then fails at once (no such data).
    r = run_cli(["pipeline", "run", "--set", "data.source=no-such-folder"], proj, env, timeout=300)
    assert r.returncode == 1 and "stage prepare failed" in r.stderr, r.stderr[-2000:]
    with sqlite3.connect(tmp_path / "prefect/prefect.db") as db:  # Prefect's own records, read directly
        states = db.execute("SELECT state_type FROM flow_run").fetchall()
        tasks = db.execute("SELECT state_type FROM task_run").fetchall()
    assert sorted(s for (s,) in states) == ["CRASHED", "FAILED"], states
    assert "RUNNING" not in {s for (s,) in tasks}, tasks
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{proj}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and [r.info.status for r in runs] == ["KILLED"] * len(runs)
