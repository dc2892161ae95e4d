"""Presets (configs/*.yaml): each validates and says what it expects; `sagan config` shows the resolved
params; `sagan init --preset` makes one the project's params.yaml (what `dvc repro` reads); the CIFAR-10
preset runs end to end through `sagan pipeline run` with tiny overrides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, flat_overrides, run_cli, tiny_overrides

from pipelines.cli import main as cli
from sagan_core.params_file import load_params

PRESETS = sorted((REPO / "configs").glob("*.yaml"))


def test_the_three_presets_exist():
    assert {p.stem for p in PRESETS} >= {"cifar10", "folder64", "imagenet128"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_validates_and_names_its_source_and_gpu_time(preset, capsys):
    assert cli.main(["config", "--params", str(preset)]) == 0, capsys.readouterr().err
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == load_params(preset).model_dump(mode="json")
    header = preset.read_text()
    assert "Source expectations:" in header and "Expected GPU time" in header


def test_cifar10_preset_is_the_paper_setup_at_32px():
    p = load_params(REPO / "configs/cifar10.yaml")
    assert (p.data.resolution, p.data.channels, p.model.conditional) == (32, 3, "yes")
    assert (p.model.g_ch, p.model.d_ch) == (64, 64)
    assert p.train.lr_d == 4 * p.train.lr_g == 4e-4  # TTUR
    assert p.train.ema_decay == 0.9999 and p.train.ema_start > 0
    assert p.eval.num_samples == 10000


def test_imagenet128_preset_is_the_paper_setup():
    p = load_params(REPO / "configs/imagenet128.yaml")
    assert (p.data.resolution, p.train.batch_size) == (128, 256)
    assert p.model.g_attn == [32] and p.model.d_attn == [32]
    assert (p.train.lr_g, p.train.lr_d, p.train.beta1, p.train.beta2) == (1e-4, 4e-4, 0.0, 0.9)
    assert p.eval.num_samples == 50000 and p.eval.reference_size is None


def test_folder64_preset_is_64px():
    assert load_params(REPO / "configs/folder64.yaml").data.resolution == 64


def test_config_applies_overrides_and_defaults(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the built-in defaults
    assert cli.main(["config", "--set", "train.steps=7", "--set", "model.g_attn=[8]"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["train"]["steps"] == 7 and shown["model"]["g_attn"] == [8]
    assert shown["eval"] == load_params("params.yaml").eval.model_dump(mode="json")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "train.lr_g=0"], "train.lr_g: expected a positive number"),
        (["--set", "model.wide=1"], "model.wide: unknown key"),
        (["--params", "nope.yaml"], "--params nope.yaml: no such file"),
    ],
)
def test_config_mistakes_exit_2_with_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["config", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sagan: error: ") and message in err[0]


def test_init_writes_the_preset_as_params_yaml_and_never_overwrites_silently(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["init", "--preset", "cifar10"]) == 0
    assert (tmp_path / "params.yaml").read_bytes() == (REPO / "configs/cifar10.yaml").read_bytes()
    assert cli.main(["init", "--preset", "imagenet128"]) == 2  # exists: refused...
    assert "add --force" in capsys.readouterr().err
    assert load_params("params.yaml").data.resolution == 32  # ...and left as it was
    assert cli.main(["init", "--preset", "imagenet128", "--force"]) == 0
    assert load_params("params.yaml").data.resolution == 128
    assert cli.main(["init", "--preset", "cifar100", "--out", "other.yaml"]) == 2
    err = capsys.readouterr().err
    assert "no such preset" in err and "cifar10, folder64, imagenet128" in err


def toy_archive(path: Path) -> Path:
    """A CIFAR-shaped archive (benchmarks/cifar_judge.py writes it: 10 classes, train/ and test/)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from cifar_judge import write_toy_archive

    return write_toy_archive(path, train_per_class=4, test_per_class=1)


TINY = flat_overrides(
    tiny_overrides(
        train__steps=2,
        train__sample_every=2,
        eval__num_samples=20,
        eval__reference_size=20,
        eval__kid_subset_size=10,
        eval__batch_size=20,
    )
)


@pytest.mark.slow
def test_dvc_repro_uses_the_preset_written_by_init(tmp_path):
    """The DVC way to use a preset: `sagan init --preset X` writes params.yaml, `dvc repro` reads it."""
    from helpers import pipeline_project

    proj = pipeline_project(tmp_path / "proj", dvc=True)
    archive = toy_archive(proj / "data/raw/cifar.tar.gz")
    assert run_cli(["init", "--preset", "cifar10", "--force"], cwd=proj).returncode == 0
    from pipelines.flow.dvc_sync import write_overrides

    write_overrides(proj / "params.yaml", [f"data.source={archive.relative_to(proj)}"])
    bin_dir = Path(sys.executable).parent  # the stages call `sagan`
    env = os.environ | {"PYTHONPATH": str(REPO), "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    dvc = [sys.executable, "-m", "dvc", "repro", "prepare"]
    r = subprocess.run(dvc, cwd=proj, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    manifest = json.loads((proj / "data/prepared/manifest.json").read_text())
    assert (manifest["channels"], manifest["num_classes"], manifest["num_images"]) == (3, 10, 50)


@pytest.mark.slow
def test_pipeline_run_with_the_cifar10_preset_end_to_end(tmp_path, prefect_api, standin_torch_home):
    proj = tmp_path / "cifar"
    proj.mkdir()
    archive = toy_archive(tmp_path / "cifar10-toy.tar.gz")
    args = [
        "pipeline",
        "run",
        "--params",
        str(REPO / "configs/cifar10.yaml"),
        "--set",
        f"data.source={archive}",
    ]
    for o in [*TINY, "eval.dims=64"]:
        args += ["--set", o]
    env = {"PREFECT_API_URL": prefect_api, "TORCH_HOME": str(standin_torch_home), "SAGAN_TRACKING": "1"}
    r = run_cli(args, cwd=proj, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((proj / "data/prepared/manifest.json").read_text())
    assert (manifest["channels"], manifest["num_classes"]) == (3, 10)
    scores = json.loads((proj / "metrics/eval.json").read_text())  # numbers only
    evaluated = json.loads((proj / "metrics/eval.record.json").read_text())  # + protocol
    assert evaluated["num_samples"] == 20 and evaluated["dims"] == 64 and scores["fid"] >= 0
    import torch

    ckpt = torch.load(proj / "models/checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 2 and ckpt["spec"]["num_classes"] == 10
    assert ckpt["params"]["train"]["ema_decay"] == 0.9999  # the preset's, not the demo's
