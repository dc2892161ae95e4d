"""`sagan pipeline serve` and `sagan pipeline deploy` against a real `prefect server start` process
(schedules and work pools need one; the temporary test server cannot serve them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, SAGAN, checkpoint_step, pipeline_project, stop_process_group
from prefect_fixtures import wait_for

pytestmark = pytest.mark.e2e
PREFECT = [sys.executable, "-m", "prefect"]


def _deploy(proj: Path, pool: str, name: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SAGAN, "pipeline", "deploy", "--pool", pool, "--name", name],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def prefect_cli(args: list[str], env: dict, cwd: Path | None = None) -> str:
    out = subprocess.run([*PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    # rich wraps tables to the terminal width: a wide one keeps names on one line
    return out.stdout


def test_serve_creates_a_deployment_with_the_cron_schedule(prefect_server, tmp_path):
    proj = pipeline_project(tmp_path / "proj", dvc=False)
    env = prefect_server | {"COLUMNS": "250"}
    serve = subprocess.Popen(
        [*SAGAN, "pipeline", "serve", "--cron", "0 3 * * 0", "--name", "weekly"],
        cwd=proj,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:

        def listed() -> str | None:
            assert serve.poll() is None, serve.stderr.read()
            out = prefect_cli(["deployment", "ls"], env)
            return out if "sagan-pipeline/weekly" in out else None

        wait_for("the served deployment", listed, every=3)
        inspected = prefect_cli(["deployment", "inspect", "sagan-pipeline/weekly"], env)
        assert "0 3 * * 0" in inspected
        assert str(proj) in inspected  # scheduled runs are pinned to this project
    finally:
        stop_process_group(serve)


def test_serve_without_a_server_says_how_to_start_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "home"), "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [*SAGAN, "pipeline", "serve"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2
    assert "prefect server start" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_deploy_to_a_process_work_pool_and_a_worker_runs_it(prefect_server, tmp_path):
    env = prefect_server | {"COLUMNS": "250"}
    proj = pipeline_project(tmp_path / "proj", dvc=False, train__steps=2, train__checkpoint_every=2)
    # The worker's run does prepare + train for real; evaluate needs Inception weights this offline
    # machine lacks, so the run is expected to fail there: what is checked is that the pool ran it.
    prefect_cli(["work-pool", "create", "sagan-test-pool", "--type", "process"], env)
    out = _deploy(proj, "sagan-test-pool", "on-pool", env)
    assert out.returncode == 0, out.stderr
    prefect_cli(["deployment", "run", "sagan-pipeline/on-pool"], env)
    worker = subprocess.run(
        [*PREFECT, "worker", "start", "--pool", "sagan-test-pool", "--run-once"],
        env=env | {"SAGAN_TRACKING": "0", "TORCH_HOME": str(tmp_path / "no-weights")},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]
    assert checkpoint_step(proj / "models/checkpoint.pt") == 2  # trained on the worker


def test_a_deployment_run_waits_for_the_projects_prefect_concurrency_limit(prefect_server, tmp_path):
    """Another holder of the project's global concurrency slot (a run on another machine) stops the run."""
    from pipelines.lock import limit_name

    env = prefect_server | {"COLUMNS": "250"}
    proj = pipeline_project(tmp_path / "proj", dvc=False, train__steps=2)
    prefect_cli(["work-pool", "create", "sagan-limit-pool", "--type", "process"], env)
    out = _deploy(proj, "sagan-limit-pool", "guarded", env)
    assert out.returncode == 0, out.stderr
    name = limit_name(proj)
    assert name in out.stdout
    inspected = prefect_cli(["gcl", "inspect", name, "--output", "json"], env)
    assert '"limit": 1' in inspected and '"active_slots": 0' in inspected
    prefect_cli(["gcl", "update", name, "--active-slots", "1"], env)  # held elsewhere
    prefect_cli(["deployment", "run", "sagan-pipeline/guarded"], env)
    worker = subprocess.run(
        [*PREFECT, "worker", "start", "--pool", "sagan-limit-pool", "--run-once"],
        env=env | {"SAGAN_TRACKING": "0"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    logs = worker.stdout + worker.stderr
    assert "another flow run holds this project" in logs and name in logs, logs[-3000:]
    assert not (proj / "data/prepared").exists()  # nothing ran
