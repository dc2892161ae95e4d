"""Long-run features of training: in-training KID/FID, best and kept checkpoints, the EMA generator's
own BatchNorm statistics, the checkpoint's fingerprint and what a changed param on resume says."""

from __future__ import annotations

import copy
import csv
import logging

import pytest
import torch
from helpers import project_params

from sagan_core.evaluate import protocol as E
from sagan_core.model import checkpoint as ckpt_io
from sagan_core.train import standing_stats
from sagan_core.train.trainer import Trainer, train

pytestmark = pytest.mark.unit

EVAL = {
    "eval__reference_size": 20,
    "eval__batch_size": 10,
    "eval__dims": 64,
    "eval__kid_subsets": 5,
    "eval__kid_subset_size": 10,
    "eval__device": "cpu",
    "train__eval_samples": 20,
}


def rows(project):
    return list(csv.DictReader((project / "metrics/train.csv").read_text().splitlines()))


@pytest.mark.integration  # two Inception passes + the reference: ~20 s on 2 cores
def test_eval_during_training_best_and_kept_checkpoints(project, monkeypatch, standin_torch_home):
    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))
    extra = EVAL | {"eval__cache_dir": str(project / "cache"), "train__log_every": 3}
    params = project_params(
        project,
        train__steps=8,
        train__eval_every=4,
        train__keep_checkpoints=1,
        train__checkpoint_every=2,
        **extra,
    )
    summary = train(params, progress=False)
    table = rows(project)
    scored = {int(r["step"]): r for r in table if r["kid"]}
    assert sorted(scored) == [4, 8]  # step 4 is no logging step: the evaluation adds its row
    assert all(float(r["fid"]) >= 0 and r["kid_std"] for r in scored.values())
    assert all(r["fid"] == "" for r in table if int(r["step"]) not in scored)  # empty in between
    best = torch.load(project / "models/best.pt", weights_only=True)
    assert best["best_metric"] == "kid"
    best_step = min(scored, key=lambda s: float(scored[s]["kid"]))  # the lower KID (first on a tie)
    assert best["step"] == best_step == summary["best"]["step"]
    assert best["best_value"] == float(scored[best_step]["kid"]) or abs(
        best["best_value"] - float(scored[best_step]["kid"])
    ) < 1e-5 * abs(best["best_value"])  # the CSV holds 6 significant digits
    assert [p.name for p in (project / "models").glob("step_*.pt")] == ["step_000008.pt"]
    # the reference statistics were computed once and are the cache `sagan evaluate` uses
    assert len(list((project / "cache").glob("*.npz"))) == 1
    # best.pt is a checkpoint like checkpoint.pt: its generator loads for sampling
    g, meta = ckpt_io.load_generator(project / "models/best.pt")
    assert meta["step"] == best_step


def test_no_inception_weights_trains_on_with_one_warning(project, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # no download either, quickly
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    quiet = {"train__sample_every": 100, "train__checkpoint_every": 100}
    params = project_params(project, train__steps=4, train__eval_every=2, **EVAL, **quiet)
    with caplog.at_level(logging.WARNING, logger="sagan"):
        summary = train(params, progress=False)
    assert summary["step"] == 4
    said = [r.getMessage() for r in caplog.records if "in-training evaluation is off" in r.getMessage()]
    assert len(said) == 1 and "Inception" in said[0]
    assert not (project / "models/best.pt").exists()
    assert all(r["kid"] == "" for r in rows(project))


def batch_stat_gap(g: torch.nn.Module, n: int = 256) -> float:
    """Mean |eval-mode output - output with the batch's own BatchNorm statistics|, same z/labels."""
    noise = torch.Generator().manual_seed(1)
    z = torch.randn(n, g.spec.z_dim, generator=noise)
    y = torch.randint(g.spec.num_classes, (n,), generator=noise) if g.spec.num_classes else None
    batch = copy.deepcopy(g.eval())
    for m in batch.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.train()
    with torch.no_grad():
        return (g(z, y) - batch(z, y)).abs().mean().item()


@pytest.mark.integration
def test_ema_generator_gets_its_own_batchnorm_statistics(project):
    """With G's copied running statistics, the EMA generator's eval-mode output is far from what its
    own weights produce with batch statistics; standing statistics close most of that gap."""
    quiet = {"train__sample_every": 100, "train__checkpoint_every": 100}
    params = project_params(project, train__steps=30, train__ema_decay=0.9, train__standing_stats=0, **quiet)
    t = Trainer(params, progress=False)
    t.fit()
    g = t.state.G_ema.module
    copied = batch_stat_gap(g)
    standing_stats.accumulate(g, 32, 64, seed=2, device=t.device)
    own = batch_stat_gap(g)
    assert own < copied / 3, (own, copied)
    # only BatchNorm statistics changed: spectral-norm vectors and weights are untouched
    before = ckpt_io.load(project / "models/checkpoint.pt")["generator_ema"]
    after = g.state_dict()
    other = [k for k in before if "running_" not in k and "num_batches" not in k]
    assert all(torch.equal(before[k], after[k]) for k in other)


def test_checkpoint_records_what_shaped_it_and_resume_names_changes(project, caplog):
    params = project_params(project, train__steps=2, train__sample_every=100)
    train(params, progress=False)
    fp = torch.load(project / "models/checkpoint.pt", weights_only=True)["fingerprint"]
    assert fp["inputs"]["train.batch_size"] == 8 and len(fp["sha256"]) == 64
    assert (
        fp["inputs"]["data.content_hash"]
        == E.open_prepared(params.data.prepared_dir).manifest["content_hash"]
    )
    changed = project_params(
        project,
        train__steps=3,
        train__sample_every=100,
        train__seed=5,
        train__ema_decay=0.5,
        train__log_every=2,
    )
    with caplog.at_level(logging.WARNING, logger="sagan"):
        train(changed, resume=True, progress=False)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "train.seed: 0 -> 5" in said and "train.ema_decay: 0.999 -> 0.5" in said
    assert "bit-exact" in said and "log_every" not in said and "train.steps" not in said


def test_img_per_s_after_an_evaluation_counts_training_only():
    """The interval after an in-training evaluation reports the steps' rate, not one that includes
    the evaluation (the trainer restarts the meter's clock after scoring)."""
    from sagan_core.train.progress import StepMeter

    now = [100.0]
    meter = StepMeter(torch.device("cpu"), step=0, images_per_step=32, clock=lambda: now[0])
    for _ in range(2):
        meter.add(torch.ones(4))
        now[0] += 0.1  # a 0.1 s step
    assert meter.read(2)[1] == pytest.approx(2 * 32 / 0.2)
    now[0] += 40.0  # an evaluation
    meter.restart_clock()
    meter.add(torch.ones(4))
    now[0] += 0.1
    assert meter.read(3)[1] == pytest.approx(32 / 0.1)
