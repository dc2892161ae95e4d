"""Parallel experiments the DVC way: `dvc exp run --queue -S ...` twice, `dvc queue start -j 2`; each
experiment shows its FID/KID in `dvc exp show` and is a run in the project's own MLflow store."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml
from helpers import BIN, REPO, dvc, git, tiny_overrides

pytestmark = pytest.mark.e2e
RATES = ("0.0003", "0.0005")


@pytest.fixture
def project(tmp_path, standin_torch_home):
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copy(REPO / ".gitignore", root)
    shutil.copytree(REPO / "sagan_core", root / "sagan_core", ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in tiny_overrides(train__sample_every=4).items():
        raw[section].update(values)
    raw["eval"].update(num_samples=20, batch_size=20, reference_size=20, kid_subsets=5, kid_subset_size=8)
    raw["tracking"]["experiment"] = "sweep"
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # as README says: the venv's bin first
        "TORCH_HOME": str(standin_torch_home),
        "SAGAN_TRACKING": "1",  # the point: each experiment is an MLflow run in the project's store
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    git(["init", "-q"], root, env)
    dvc(["init", "-q"], root, env)
    git(["add", "-A"], root, env)
    git(["commit", "-qm", "project"], root, env)
    return root, env


def test_two_queued_experiments_run_in_parallel_into_the_projects_mlflow_store(project):
    root, env = project
    for rate in RATES:
        dvc(["exp", "run", "--queue", "-S", f"train.lr_g={rate}"], root, env)
    dvc(["queue", "start", "-j", "2"], root, env)
    try:
        deadline = time.monotonic() + 1200
        while True:
            status = dvc(["queue", "status"], root, env).stdout
            if "Queued" not in status and "Running" not in status:
                break
            assert time.monotonic() < deadline, status
            time.sleep(5)
    finally:
        dvc(["queue", "stop", "--kill"], root, env, check=False)
    failed = [line.split()[1] for line in status.splitlines() if "Failed" in line]
    logs = "".join(dvc(["queue", "logs", name], root, env, check=False).stdout[-3000:] for name in failed)
    assert status.count("Success") == 2, status + logs

    rows = json.loads(dvc(["exp", "show", "--json"], root, env).stdout)
    exps = [e for commit in rows for e in (commit.get("experiments") or [])]
    seen = {}
    for exp in exps:
        (rev,) = exp["revs"]
        data = rev["data"]
        lr = data["params"]["params.yaml"]["data"]["train"]["lr_g"]
        metrics = data["metrics"]["metrics/eval.json"]["data"]
        seen[str(lr)] = (exp["name"], metrics)
    assert sorted(seen) == sorted(str(float(r)) for r in RATES), seen
    for _, metrics in seen.values():
        assert metrics["fid"] > 0 and "kid_mean" in metrics  # numbers only: no protocol in the table

    # both runs are in the project's store (not a copy under .dvc/tmp), named after their experiment
    from mlflow import MlflowClient

    assert not list(Path(root, ".dvc/tmp").rglob("mlflow.db"))
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
    by_exp = {r.data.tags.get("sagan.dvc_exp"): r for r in runs}
    for name, metrics in seen.values():
        run = by_exp[name]
        assert run.info.run_name == name and run.data.metrics["eval/fid"] == pytest.approx(metrics["fid"])
