"""Prefect test helpers: one temporary Prefect server per session, and pipeline project folders.

Import the fixtures into a test module (`from prefect_fixtures import prefect_api, ...`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, tiny_overrides

from pipelines.dvc_sync import write_overrides


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """A temporary Prefect server for the whole session (each start costs ~20 s); its API URL.

    Subprocesses reach the same server by setting PREFECT_API_URL to the returned URL.
    """
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield PREFECT_API_URL.value()


def flat_overrides(raw: dict) -> list[str]:
    return [f"{section}.{k}={v}" for section, values in raw.items() for k, v in values.items()]


def pipeline_project(root: Path, dvc: bool, **extra: object) -> Path:
    """A project folder: the repo's params.yaml with the tiny preset written in, and, with `dvc`,
    a git + DVC repository holding the repo's dvc.yaml and the code its stages depend on."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    # Samples (with their attention figure) only at the end: they cost more than a tiny step.
    # FID on 20 generated vs 20 reference images: Inception costs ~0.1-0.2 s per image on CPU.
    small = {"train__sample_every": 4, "eval__num_samples": 20, "eval__reference_size": 20}
    small |= {"eval__kid_subset_size": 10, "eval__batch_size": 20}
    write_overrides(root / "params.yaml", flat_overrides(tiny_overrides(**(small | extra))))
    if not dvc:
        return root  # no dvc.yaml: pipeline.dvc=auto leaves DVC out
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "sagan_core", root / "sagan_core", ignore=shutil.ignore_patterns("__pycache__"))
    (root / ".gitignore").write_text("/.sagan/\n/mlflow.db\n/mlruns/\n/mlartifacts/\n")
    env = os.environ | {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env |= {"GIT_COMMITTER_EMAIL": "t@t"}
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, env=env, capture_output=True)
    return root


def dvc_status(root: Path) -> str:
    """`dvc status` as a user runs it (a separate process: an independent check of the flow's view)."""
    out = subprocess.run(
        [sys.executable, "-m", "dvc", "status"], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
