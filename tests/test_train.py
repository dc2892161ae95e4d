"""Training: exact resume, NaN guard, checkpoint contents, the CUDA-default paths run on CPU."""

from __future__ import annotations

import csv

import pytest
import torch
from helpers import STATE_KEYS, project_params

from sagan_core.train.progress import Callback
from sagan_core.train.state import TrainState
from sagan_core.train.trainer import Trainer, TrainingDiverged, train

pytestmark = pytest.mark.unit


def load_ckpt(project):
    return torch.load(project / "models/checkpoint.pt", weights_only=True)


def test_checkpoint_contents_and_outputs(project):
    params = project_params(project, train__steps=3)
    summary = train(params, progress=False)
    ck = load_ckpt(project)  # weights_only=True must work
    assert ck["step"] == 3 == summary["step"]
    for key in (*STATE_KEYS, "opt_g", "opt_d", "rng", "loader", "spec", "params"):
        assert key in ck
    assert ck["spec"]["num_classes"] == 10  # labelled demo data -> conditional
    assert (project / "samples/latest.png").stat().st_size > 0
    assert (project / "samples/attention.png").stat().st_size > 0
    rows = list(csv.DictReader((project / "metrics/train.csv").read_text().splitlines()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert {"loss_d", "loss_g", "d_real", "d_fake", "gamma_g0", "gamma_d0", "img_per_s"} <= rows[0].keys()


def test_resume_refuses_a_different_architecture(project):
    from sagan_core.errors import ConfigError

    train(project_params(project, train__steps=2), progress=False)
    with pytest.raises(ConfigError, match="g_ch=4"):
        train(project_params(project, train__steps=4, model__g_ch=8), resume=True, progress=False)


class PoisonAt(Callback):
    """Turns one generator weight into NaN after a given step (a stand-in for a blow-up)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step: int, state: TrainState) -> None:
        if step == self.step:
            with torch.no_grad():
                next(state.G.parameters()).view(-1)[0] = float("nan")


def test_nan_guard_stops_and_keeps_last_good_checkpoint(project):
    params = project_params(project, train__steps=8, train__checkpoint_every=2, train__log_every=1)
    with pytest.raises(TrainingDiverged, match=r"diverged at step 3.*not finite.*step 2"):
        train(params, callbacks=[PoisonAt(3)], progress=False)
    ck = load_ckpt(project)
    assert ck["step"] == 2
    for key in STATE_KEYS:
        assert all(torch.isfinite(t).all() for t in ck[key].values() if t.is_floating_point())


def test_nan_guard_checks_before_every_checkpoint(project):
    """With sparse logging, the checkpoint write itself refuses non-finite weights."""
    params = project_params(project, train__steps=8, train__checkpoint_every=2, train__log_every=100)
    with pytest.raises(TrainingDiverged, match="generator weights"):
        train(params, callbacks=[PoisonAt(3)], progress=False)
    assert load_ckpt(project)["step"] == 2


def test_cuda_default_paths_run_on_cpu(project):
    """bf16 autocast and channels_last (the CUDA defaults) are the same code path: run them here."""
    params = project_params(project, train__steps=2, train__precision="bf16", train__channels_last="yes")
    t = Trainer(params, progress=False)
    assert t.plan.bf16 and t.plan.channels_last
    t.fit()
    ck = load_ckpt(project)
    assert ck["step"] == 2
    assert all(v.dtype == torch.float32 for v in ck["generator"].values() if v.is_floating_point())
    # spectral norm stays fp32 and normalised under autocast
    for m in t.state.G.modules():
        if hasattr(m, "parametrizations"):
            sn = m.parametrizations.weight[0]
            assert sn._u.dtype == torch.float32


@pytest.mark.integration
def test_compile_path_runs_on_cpu(project, monkeypatch):
    """Our torch.compile wiring (DDP/compile wrappers, buffers mutated by spectral norm) traced by
    dynamo. The eager backend skips inductor's C++ codegen, which takes minutes on 2 cores; inductor
    itself is exercised on the GPU (benchmarks/train_throughput.py --compile)."""
    import functools

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    params = project_params(project, train__steps=2, train__compile=True, model__conditional="no")
    summary = train(params, progress=False)
    assert summary["step"] == 2 and torch.isfinite(torch.tensor(summary["metrics"]["loss_d"]))


def test_unconditional_when_forced(project):
    train(project_params(project, train__steps=1, model__conditional="no"), progress=False)
    ck = load_ckpt(project)
    assert ck["spec"]["num_classes"] == 0
    assert not any("embed" in k for k in ck["discriminator"])


class StopAt(Callback):
    """Stops training with an exception after a given step (a stand-in for an interrupted run)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step: int, state: TrainState) -> None:
        if step == self.step:
            raise KeyboardInterrupt


class DiskSnapshot(Callback):
    """The metrics CSV as it is on disk (what a kill -9 would leave) after a given step."""

    def __init__(self, path, step: int):
        self.path, self.step, self.text = path, step, None

    def on_step_end(self, step: int, state: TrainState) -> None:
        if step == self.step:
            self.text = self.path.read_text()


def steps_in(text: str) -> list[int]:
    return [int(r["step"]) for r in csv.DictReader(text.splitlines())]


def test_metrics_history_survives_a_kill_right_after_resume(project):
    """On resume the rows after the checkpoint are dropped and the rest is on disk before training
    goes on: a kill -9 before the next logging step keeps the history up to the checkpoint."""
    metrics = project / "metrics/train.csv"
    extra = {"train__steps": 8, "train__checkpoint_every": 2}
    with pytest.raises(KeyboardInterrupt):
        train(project_params(project, **extra), callbacks=[StopAt(4)], progress=False)
    assert steps_in(metrics.read_text()) == [1, 2, 3]  # logged past the checkpoint at step 2
    assert load_ckpt(project)["step"] == 2
    snapshot = DiskSnapshot(metrics, 3)
    train(project_params(project, **extra, train__log_every=2), resume=True, callbacks=[snapshot])
    assert steps_in(snapshot.text) == [1, 2]  # on disk between resume and the next logging step
    assert steps_in(metrics.read_text()) == [1, 2, 4, 6, 8]


def test_step_line_is_the_one_progress_line(project, caplog):
    from sagan_core.train.progress import step_line

    metrics = {"loss_d": 1.23456, "loss_g": -0.5, "gamma_g0": 0.01234, "gamma_d0": -0.2, "img_per_s": 812.4}
    assert (
        step_line(50, 1800, metrics)
        == "step 50/1800  loss_d 1.2346  loss_g -0.5000  812 img/s  γ g0=0.012 d0=-0.200"
    )
    caplog.set_level("INFO", logger="sagan.train")
    train(project_params(project, train__steps=2, train__log_every=2))  # stderr is no terminal here
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert len(lines) == 1 and lines[0].startswith("step 2/2  loss_d ") and "γ g0=" in lines[0]
