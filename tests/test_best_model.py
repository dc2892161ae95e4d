"""The best checkpoint in MLflow: uploaded to the run as training finds it, its KID/FID in the run's
curves, and `sagan register` (eval.checkpoint=best) exporting and registering its generator; no
generator is exported during training, whose weights stay those of an untracked run, bit for bit."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import project_params

from pipelines import stages
from pipelines.fetch_checkpoint import fetch
from pipelines.tracking.run_record import read_run_record

pytestmark = pytest.mark.integration  # training with in-training evaluation, evaluate and register


def test_registered_version_is_the_best_checkpoint_exported_at_registration(
    project, monkeypatch, standin_torch_home
):
    from mlflow import MlflowClient

    monkeypatch.setenv("SAGAN_TRACKING", "1")
    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))
    uri = f"sqlite:///{project}/mlflow.db"
    ev = {"eval__num_samples": 20, "eval__reference_size": 20, "eval__batch_size": 20, "eval__dims": 64}
    ev |= {"eval__kid_subsets": 5, "eval__kid_subset_size": 10, "eval__cache_dir": str(project / "cache")}
    params = project_params(
        project,
        train__steps=4,
        train__eval_every=2,
        train__eval_samples=20,
        train__sample_every=100,
        tracking__uri=uri,
        tracking__artifact_location=str(project / "artifacts"),
        registry__model_name="best-test",
        **ev,
    )
    stages.train(params, progress=False)
    record = read_run_record(params)
    best = torch.load(project / "models/best.pt", weights_only=True)
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_run(record.run_id).info.experiment_id
    assert client.search_logged_models([exp]) == []  # exported when registered, not at each improvement
    assert_training_untouched(project, monkeypatch)
    evaluated = stages.evaluate(params, progress=False)
    assert evaluated.generator_step == best["step"]  # eval.checkpoint=best: best.pt was evaluated
    registered = stages.register(params)

    mv = client.get_model_version("best-test", str(registered.version))
    (model,) = client.search_logged_models([exp])
    # the version is the LoggedModel: its source, its tag, and the model's "registered" link
    assert mv.source == f"models:/{model.model_id}" and mv.tags["model_id"] == model.model_id
    assert mv.run_id == record.run_id
    linked = json.loads(client.get_logged_model(model.model_id).tags["mlflow.modelVersions"])
    assert [(v["name"], str(v["version"])) for v in linked] == [("best-test", str(registered.version))]
    assert mv.tags["candidate"] == "best" and f"at step {best['step']}" in mv.tags["candidate.reason"]
    assert f"kid {best['best_value']:.6g}" in mv.tags["candidate.reason"]
    assert model.name == f"generator-step-{best['step']:06d}"  # told apart by step in the run's list
    assert_run_scores(client, project, params, best["step"], mv)
    assert_model_card(client.get_model_version("best-test", str(registered.version)), best["step"])

    # --resume-from models:/NAME@ALIAS fetches the checkpoint the version was registered from (best.pt)
    clone = project / "clone"
    shutil.copytree(project / "data/prepared", clone / "data/prepared")
    fetch(project_params(clone, tracking__uri=uri), "models:/best-test@champion")
    fetched = torch.load(clone / "models/checkpoint.pt", weights_only=True)
    assert fetched["step"] == best["step"] and fetched["best_metric"] == "kid"
    assert (clone / "models/checkpoint.pt").read_bytes() == (project / "models/best.pt").read_bytes()
    assert json.loads((clone / "models/mlflow_run.json").read_text())["run_id"] == mv.run_id


def assert_run_scores(client, project, params, step: int, mv) -> None:
    """In-training scores by step, the final ones once (an evaluation rerun adds no row), every
    metric in a section."""
    run = client.get_run(mv.run_id)
    sections = {k.split("/")[0] for k in run.data.metrics}
    assert sections <= {"train", "attention", "train_eval", "eval", "system"}, run.data.metrics.keys()
    assert sorted(m.step for m in client.get_metric_history(mv.run_id, "train_eval/kid")) == [2, 4]
    eval_json = json.loads((project / "metrics/eval.json").read_text())
    want = {f"eval/{k}": v for k, v in eval_json.items() if k != "generator_step"}
    assert {k: run.data.metrics[k] for k in want} == pytest.approx(want)
    stages.evaluate(params, progress=False)  # evaluated again: no second row
    assert [m.step for m in client.get_metric_history(mv.run_id, "eval/fid")] == [step]
    # rates never changed: params only, no flat chart
    assert "train/lr_g" not in run.data.metrics and run.data.params["train.lr_g"] == "0.0001"
    assert run.data.tags["sagan.precision"] in ("bf16", "fp32")


def assert_model_card(mv, step: int) -> None:
    """The card says what ran (resolved attention, precision, device) and how to load it by alias,
    and shows the sample grid of the registered step from the run's artifacts."""
    card = mv.description
    assert "| self-attention | G at 16×16, D at 16×16 (feature maps) |" in card, card
    assert "| precision | bf16 |" in card or "| precision | fp32 |" in card
    assert "| hardware | cpu × 1 process(es) |" in card
    assert "models:/best-test@champion" in card and "models:/best-test/" not in card
    # the grid of that step when one was drawn (sample_every), else the run's latest grid
    at_step = f"(get-artifact?path=images/samples%2Bstep%2B{step}%2B" in card  # "+" quoted
    assert at_step or (step != 4 and "(get-artifact?path=samples/latest.png&" in card), card
    assert f"run_uuid={mv.run_id})" in card


def assert_training_untouched(project, monkeypatch) -> None:
    """Tracking and in-training evaluation changed no trained tensor: the same steps untracked and
    without evaluation give the same weights, bit for bit."""
    plain = project / "plain"
    shutil.copytree(project / "data/prepared", plain / "data/prepared")
    monkeypatch.setenv("SAGAN_TRACKING", "0")
    stages.train(project_params(plain, train__steps=4, train__sample_every=100), progress=False)
    monkeypatch.setenv("SAGAN_TRACKING", "1")
    ours, theirs = (torch.load(p / "models/checkpoint.pt", weights_only=True) for p in (project, plain))
    for part in ("generator", "generator_ema", "discriminator"):
        assert ours[part].keys() == theirs[part].keys()
        for key, tensor in ours[part].items():
            assert torch.equal(tensor, theirs[part][key]), f"{part}.{key}"
