"""Shared fixtures. Tests run on CPU, in temporary project directories, with tiny models."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sagan_core.config import Params

sys.path.insert(0, str(Path(__file__).resolve().parent))  # test helpers (standin_inception)
REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAGAN = [sys.executable, "-m", "pipelines.cli"]

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def tiny_overrides(**extra: object) -> dict:
    """Params for a model small enough to take a few steps per second on one CPU core."""
    raw = {
        "model": {"g_ch": 4, "d_ch": 4, "z_dim": 16},
        "train": {"steps": 4, "batch_size": 8, "checkpoint_every": 2, "sample_every": 2, "log_every": 1},
        "eval": {"num_samples": 64, "batch_size": 32, "dims": 64, "kid_subsets": 10, "kid_subset_size": 32},
    }
    for key, value in extra.items():
        section, _, name = key.partition("__")
        raw.setdefault(section, {})[name] = value
    return raw


# The same tiny model as `sagan` CLI flags, for tests that run the command itself.
TINY_CLI = [
    "--set",
    "model.g_ch=4",
    "--set",
    "model.d_ch=8",
    "--set",
    "model.z_dim=16",
    "--set",
    "train.batch_size=8",
]


def make_params(project: Path, **extra: object) -> Params:
    raw = tiny_overrides(**extra)
    raw.setdefault("data", {})["prepared_dir"] = str(project / "data/prepared")
    raw["train"] |= {
        "out_dir": str(project / "models"),
        "samples_dir": str(project / "samples"),
        "metrics_file": str(project / "metrics/train.csv"),
    }
    return Params.model_validate(raw)


@pytest.fixture(scope="session")
def prepared_demo(tmp_path_factory) -> Path:
    """The bundled demo dataset, prepared once per session (32 px, 1 channel)."""
    from sagan_core.prepare import prepare

    root = tmp_path_factory.mktemp("demo")
    prepare(
        Params.model_validate({"data": {"prepared_dir": str(root / "data/prepared")}}).data, progress=False
    )
    return root / "data/prepared"


@pytest.fixture
def project(tmp_path, prepared_demo) -> Path:
    """A temporary project directory holding a copy of the prepared demo data."""
    shutil.copytree(prepared_demo, tmp_path / "data/prepared")
    return tmp_path


def run_cli(
    args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """`sagan ARGS` in a subprocess, as a user would run it."""
    full_env = os.environ | {"PYTHONPATH": str(REPO)} | (env or {})
    return subprocess.run(
        SAGAN + args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def standin_torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME holding the deterministic stand-in Inception weights (see standin_inception.py).

    Tests that evaluate set TORCH_HOME to this path (monkeypatch.setenv or the subprocess env).
    """
    from standin_inception import write_standin

    home = tmp_path_factory.mktemp("torch_home")
    write_standin(home)
    return home


# MLflow tracking is on by default for the CLI stages (registry.tracking); the suite turns it off
# so tests that train do not need a tracking store. MLflow tests (tests/test_mlflow.py) set
# SAGAN_TRACKING=1 where they train or evaluate.
os.environ.setdefault("SAGAN_TRACKING", "0")


def run_two_rank_worker(project: Path, env: dict | None = None) -> tuple[dict, dict]:
    """torchrun 2 processes of ddp_worker.py on `project`; returns each rank's final weights."""
    full_env = os.environ | {"PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"} | (env or {})
    worker = Path(__file__).parent / "ddp_worker.py"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(worker),
        str(project),
    ]
    r = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r0, r1 = (torch.load(project / f"rank{i}.pt", weights_only=True) for i in (0, 1))
    for net in ("G", "D"):
        assert r0[net].keys() == r1[net].keys()
        for k in r0[net]:
            assert torch.equal(r0[net][k], r1[net][k]), f"{net}.{k} differs between ranks"
    return r0, r1
