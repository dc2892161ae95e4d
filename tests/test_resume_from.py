"""`sagan train --resume-from runs:/<id>`: a run tracked on one machine continues bit-exactly in an
empty clone, into the same MLflow run (sqlite store, real MLflow)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import STATE_KEYS, assert_same_tensors, cli, project_params, subset_prepared

from pipelines import stages
from pipelines.fetch_checkpoint import fetch

pytestmark = pytest.mark.integration  # three trainings and an MLflow store


def test_resume_from_a_run_continues_bit_exactly_in_an_empty_clone(tmp_path, prepared_demo, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracked = {"tracking__uri": uri, "tracking__artifact_location": str(tmp_path / "artifacts")}
    extra = {"train__steps": 6, "train__checkpoint_every": 100, "train__ema_start": 2, "data__hflip": True}
    extra |= {"train__sample_every": 100}
    ref, first, clone = tmp_path / "ref", tmp_path / "first", tmp_path / "clone"
    for p in (ref, first, clone):
        subset_prepared(prepared_demo, p / "data/prepared", 20)
    monkeypatch.setenv("SAGAN_TRACKING", "0")
    stages.train(project_params(ref, **extra), progress=False)  # 6 uninterrupted steps
    monkeypatch.setenv("SAGAN_TRACKING", "1")
    stages.train(project_params(first, **(extra | tracked | {"train__steps": 3})), progress=False)
    run_id = json.loads((first / "models/mlflow_run.json").read_text())["run_id"]

    params = project_params(clone, **(extra | tracked))  # nothing but the prepared data here
    assert not (clone / "models").exists()
    fetch(params, f"runs:/{run_id}")
    stages.train(params, resume=True, progress=False)
    got, want = (torch.load(p / "models/checkpoint.pt", weights_only=True) for p in (clone, ref))
    assert got["step"] == want["step"] == 6
    for key in (*STATE_KEYS, "opt_g", "opt_d", "rng", "loader", "ema_n_averaged"):
        assert_same_tensors(got[key], want[key], key)
    # the same MLflow run goes on: its curve has every step, once
    assert json.loads((clone / "models/mlflow_run.json").read_text())["run_id"] == run_id
    from mlflow import MlflowClient

    history = MlflowClient(uri).get_metric_history(run_id, "train/loss_d")
    assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]


@pytest.mark.unit
def test_resume_from_errors_are_one_line(project):
    r = cli(["train", "--resume-from", str(project / "nope.pt")], project)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nope.pt" in r.stderr, r.stderr
