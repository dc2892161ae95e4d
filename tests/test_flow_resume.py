"""The flow resumes only a checkpoint whose own fingerprint matches the run (Prefect harness)."""

from __future__ import annotations

import pytest
import torch
from helpers import fake_downstream, pipeline_project

from pipelines.flow.pipeline import sagan_pipeline

pytestmark = pytest.mark.e2e


def test_flow_never_resumes_a_stale_checkpoint(prefect_api, tmp_path, monkeypatch):
    """The checkpoint's own fingerprint decides: other training params (or data) train from step 0;
    the same ones continue the checkpoint to more steps."""
    fake_downstream(monkeypatch)
    proj = pipeline_project(tmp_path / "proj", dvc=False, train__steps=2, train__sample_every=100)
    assert sagan_pipeline(project_dir=str(proj)).trained_steps == 2
    stale = sagan_pipeline(project_dir=str(proj), overrides=["train.steps=3", "train.seed=7"])
    assert (stale.step, stale.trained_steps) == (3, 3)  # from step 0, not from the seed-0 checkpoint
    ckpt = torch.load(proj / "models/checkpoint.pt", weights_only=True)
    assert ckpt["fingerprint"]["inputs"]["train.seed"] == 7
    same = sagan_pipeline(project_dir=str(proj), overrides=["train.steps=4", "train.seed=7"])
    assert (same.step, same.trained_steps) == (4, 1)  # same params, more steps: resumed
