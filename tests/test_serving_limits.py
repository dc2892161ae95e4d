"""Limits of the served generator and of `sagan sample`: a total image budget per request (all
rows together), seeds 0 <= seed < 2**63, one-line refusals without a stack trace, and images made
BATCH at a time however many are asked for. No model is logged here: a stand-in network counts
the batches (the real server: tests/test_serving.py)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from helpers import cli
from mlflow.exceptions import MlflowException

from pipelines.tracking.generator_pyfunc import BATCH, MAX_IMAGES, GeneratorModel

pytestmark = pytest.mark.unit


def _model(fail: bool = False) -> tuple[GeneratorModel, list[int]]:
    """The pyfunc around a stand-in network that records each batch size."""
    model, batches = GeneratorModel(), []
    model.z_dim, model.num_classes, model.class_names = 4, 10, [str(i) for i in range(10)]

    def network(x):
        if fail:
            raise RuntimeError("CUDA out of memory (stand-in)")
        batches.append(len(x))
        return torch.zeros(len(x), 1, 4, 4)

    model.module = network
    return model, batches


def _refusal(model: GeneratorModel, rows: list[dict]) -> MlflowException:
    with pytest.raises(MlflowException) as info:
        model.predict(None, pd.DataFrame(rows))
    e = info.value
    body = e.serialize_as_json()  # what the scoring server answers
    assert "Traceback" not in body and "\n" not in e.message and "stack_trace" not in body
    return e


def test_request_over_the_image_budget_is_refused_before_any_image():
    model, batches = _model()
    rows = [{"class": "1", "n": 600}, {"class": "2", "n": 600}]  # each row within, the total not
    e = _refusal(model, rows)
    assert e.get_http_status_code() == 400 and f"budget of {MAX_IMAGES} images per request" in e.message
    e = _refusal(model, [{"class": "1"}] * (MAX_IMAGES + 1))  # many rows of one image
    assert f"budget of {MAX_IMAGES}" in e.message and batches == []


@pytest.mark.parametrize("seed", [2**64, 2**63, -1, 1.5, "x"])
def test_bad_seeds_are_a_400_without_a_stack_trace(seed):
    model, batches = _model()
    e = _refusal(model, [{"class": "1", "n": 1, "seed": seed}])
    assert e.get_http_status_code() == 400 and e.message.startswith("seed: expected a whole number")
    assert batches == []


def test_an_unexpected_failure_is_one_line_too():
    e = _refusal(_model(fail=True)[0], [{"class": "1", "n": 2}])
    assert e.message == "generation failed (RuntimeError)" and e.get_http_status_code() == 500


def test_the_whole_budget_is_generated_in_batches():
    model, batches = _model()
    answer = model.predict(
        None, pd.DataFrame([{"class": "1", "n": MAX_IMAGES - 24}, {"class": "5", "n": 24}])
    )
    assert len(answer) == MAX_IMAGES and list(answer["index"][-24:]) == list(range(24))
    assert max(batches) == BATCH and sum(batches) == MAX_IMAGES


def test_generation_stops_once_the_servers_timeout_has_passed(monkeypatch):
    import time

    model, batches = _model()
    network = model.module
    model.module = lambda x: (time.sleep(0.05), network(x))[1]
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "0.12")  # the server answered 504 by then
    e = _refusal(model, [{"class": "1", "n": MAX_IMAGES}])
    assert e.message.startswith("timed out") and 1 <= len(batches) < MAX_IMAGES // BATCH


@pytest.mark.unit
def test_sample_n_over_the_bound_is_exit_2_in_one_line(tmp_path):
    r = cli(["sample", "--model", "nowhere.pt", "--n", str(MAX_IMAGES + 1)], tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"--n: expected 1..{MAX_IMAGES} images" in r.stderr
    r = cli(["sample", "--model", "nowhere.pt", "--seed", str(2**64)], tmp_path)
    assert r.returncode == 2 and "--seed: expected 0 <= seed < 2**63" in r.stderr, r.stderr


def test_sample_makes_a_large_n_in_batches(tmp_path, monkeypatch):
    from pipelines.registry import sampling
    from sagan_core.config import Params

    batches = []

    def generate(z, y):
        batches.append(len(z))
        return torch.zeros(len(z), 1, 4, 4)

    monkeypatch.setattr(sampling, "load_sampler", lambda m, p: sampling.Sampler(generate, 4, 10, [], m))
    r = sampling.sample(Params(), "stand-in", MAX_IMAGES, None, tmp_path / "grid.png", None, 0, None)
    assert r["shape"] == [MAX_IMAGES, 1, 4, 4] and max(batches) == BATCH and sum(batches) == MAX_IMAGES
