"""Fixtures shared by the test modules; helpers they call live in helpers.py.

Services are session-scoped plugins, started only by the tests that ask for them: mlflow_fixtures
(moto S3 + `mlflow server`) and prefect_fixtures (the temporary Prefect server, and a real
`prefect server start` process).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from sagan_core.config import Params

pytest_plugins = ["lanes", "mlflow_fixtures", "prefect_fixtures"]

# At most 2 torch threads, the cores shared among pytest-xdist's workers (`-n auto` on 2 cores: one
# each). The commands the tests start use as many (OMP_NUM_THREADS): a reduction's result depends on
# the thread count, and tests compare this process's weights with theirs bit for bit.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
os.environ["OMP_NUM_THREADS"] = str(_THREADS)
torch.set_num_threads(_THREADS)

# MLflow tracking is on by default for the CLI stages (tracking.enabled); the suite turns it off
# so tests that train do not need a tracking store. MLflow tests (tests/test_mlflow.py) set
# SAGAN_TRACKING=1 where they train or evaluate.
os.environ.setdefault("SAGAN_TRACKING", "0")


@pytest.fixture(scope="session")
def prepared_demo(tmp_path_factory) -> Path:
    """The bundled demo dataset, prepared once per session (32 px, 1 channel)."""
    from sagan_core.data.prepare import prepare

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


@pytest.fixture(scope="session")
def trained_demo(tmp_path_factory, prepared_demo) -> Path:
    """A project holding the demo and a tiny 2-step checkpoint, trained once per session. Read it, or
    ask for `trained_project` (a copy of it) to change it."""
    from helpers import project_params

    from sagan_core.train.trainer import train

    root = tmp_path_factory.mktemp("trained")
    shutil.copytree(prepared_demo, root / "data/prepared")
    train(project_params(root, train__steps=2), progress=False)
    return root


@pytest.fixture
def trained_project(tmp_path, trained_demo) -> Path:
    """A temporary copy of `trained_demo` (the demo and its 2-step checkpoint), for tests that change it."""
    shutil.copytree(trained_demo, tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.fixture(scope="session")
def standin_torch_home(tmp_path_factory) -> Path:
    """A TORCH_HOME holding the deterministic stand-in Inception weights (see standin_inception.py).

    Tests that evaluate set TORCH_HOME to this path (monkeypatch.setenv or the subprocess env).
    """
    from standin_inception import write_standin

    home = tmp_path_factory.mktemp("torch_home")
    write_standin(home)
    return home
