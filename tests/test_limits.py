"""Sizes are bounded at validation, and a tracked training run's output carries no MLflow warning."""

from __future__ import annotations

import logging

import pytest
from helpers import cli, project_params

from pipelines import stages

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "key",
    ["eval.num_samples", "train.eval_samples", "eval.kid_subsets", "eval.kid_subset_size", "data.workers"],
)
def test_sizes_that_allocate_have_upper_bounds(key, tmp_path):
    from sagan_core.errors import ConfigError
    from sagan_core.params_file import load_params

    with pytest.raises(ConfigError, match=rf"^{key}: expected a number <= \d+, got 1000000000$"):
        (tmp_path / "params.yaml").write_text("{}\n")
        load_params(tmp_path / "params.yaml", [f"{key}=1000000000"])


@pytest.mark.unit
def test_a_billion_eval_samples_is_an_exit_2_error_at_validation(tmp_path):
    r = cli(["evaluate", "--set", "eval.num_samples=1000000000"], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "sagan: error: eval.num_samples: expected a number <= 1000000, got 1000000000"


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.mark.integration  # a tracked training run with in-training evaluation
def test_tracked_run_with_in_training_evaluation_logs_no_model_config_warning(
    project, monkeypatch, standin_torch_home, capfd
):
    monkeypatch.setenv("SAGAN_TRACKING", "1")
    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))
    ev = {"eval__reference_size": 20, "eval__batch_size": 20, "eval__dims": 64, "eval__kid_subsets": 5}
    ev |= {"eval__kid_subset_size": 10, "eval__cache_dir": str(project / "cache")}
    params = project_params(
        project,
        train__steps=4,
        train__eval_every=2,  # a model at step 2 (the first best), another at step 4 (best or final)
        train__eval_samples=20,
        train__sample_every=100,
        tracking__uri=f"sqlite:///{project}/mlflow.db",
        tracking__artifact_location=str(project / "artifacts"),
        **ev,
    )
    records = _Records()
    logging.getLogger("mlflow").addHandler(records)
    try:
        stages.train(params, progress=False)
    finally:
        logging.getLogger("mlflow").removeHandler(records)
    out, err = capfd.readouterr()
    assert (project / "models/best.pt").exists()
    for text in (out, err, "\n".join(records.lines)):
        assert "Failed to log model config" not in text
        assert "Changing param values is not allowed" not in text
