"""Presets (shipped in the package: pipelines/project/presets/*.yaml): each validates, says what it
expects and names no path outside a project; `sagan config` shows the resolved params; `sagan init .
--preset X --force` makes one an existing project's params.yaml (what `dvc repro` reads). Every preset
running end to end in a new project: tests/test_init_e2e.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers import REPO

from pipelines.cli import main as cli
from pipelines.project.catalog import PRESETS_DIR
from sagan_core.params_file import load_params

pytestmark = pytest.mark.unit

PRESETS = sorted(PRESETS_DIR.glob("*.yaml"))


def test_the_four_presets_exist():
    assert {p.stem for p in PRESETS} >= {"cifar10", "folder64", "gray32", "imagenet128"}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_validates_and_names_its_source_and_gpu_time(preset, capsys):
    assert cli.main(["config", "--params", str(preset)]) == 0, capsys.readouterr().err
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown == load_params(preset).model_dump(mode="json")
    header = preset.read_text()
    assert "Source expectations:" in header and "Expected GPU time" in header


def test_cifar10_preset_is_the_paper_setup_at_32px():
    p = load_params(PRESETS_DIR / "cifar10.yaml")
    assert (p.data.resolution, p.data.channels, p.model.conditional) == (32, 3, "yes")
    assert (p.model.g_ch, p.model.d_ch) == (64, 64)
    assert p.train.lr_d == 4 * p.train.lr_g == 4e-4  # TTUR
    assert p.train.ema_decay == 0.9999 and p.train.ema_start > 0
    assert p.eval.num_samples == 10000


def test_imagenet128_preset_is_the_paper_setup():
    p = load_params(PRESETS_DIR / "imagenet128.yaml")
    assert (p.data.resolution, p.train.batch_size) == (128, 256)
    assert p.model.g_attn == [32] and p.model.d_attn == [32]
    assert (p.train.lr_g, p.train.lr_d, p.train.beta1, p.train.beta2) == (1e-4, 4e-4, 0.0, 0.9)
    assert p.eval.num_samples == 50000 and p.eval.reference_size is None


def test_folder64_preset_is_64px():
    assert load_params(PRESETS_DIR / "folder64.yaml").data.resolution == 64


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


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_names_its_data_inside_the_project(preset):
    source = load_params(preset).data.source
    assert source.startswith("data/raw/") and ".." not in Path(source).parts, source


def test_the_package_ships_the_presets_and_the_repo_keeps_no_second_copy():
    assert PRESETS_DIR.parent.name == "project" and PRESETS_DIR.is_relative_to(REPO / "pipelines")
    assert not (REPO / "configs").exists()
    import tomllib
    from fnmatch import fnmatch

    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = setuptools["package-data"]["pipelines.project"]
    room = PRESETS_DIR.parent
    data = [
        f.relative_to(room).as_posix()
        for f in room.rglob("*")
        if f.is_file() and f.suffix not in (".py", ".pyc")
    ]
    assert {"presets/cifar10.yaml", "templates/dvc.yaml.template", "templates/gitignore"} <= set(data)
    assert [f for f in data if not any(fnmatch(f, g) for g in globs)] == []  # all in the wheel


@pytest.mark.integration
def test_init_dot_makes_a_preset_the_params_yaml_and_never_overwrites_silently(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")  # an existing project's own dvc.yaml: kept
    assert cli.main(["init", ".", "--preset", "cifar10"]) == 0, capsys.readouterr().err
    # the preset as it is, but for the registry names: the folder's (a plain word already here)
    preset = (PRESETS_DIR / "cifar10.yaml").read_text()
    for key in ("model_name", "experiment"):
        preset = preset.replace(f"  {key}: sagan-cifar10\n", f"  {key}: {tmp_path.name}\n")
    assert (tmp_path / "params.yaml").read_text() == preset
    assert (tmp_path / "dvc.yaml").read_text() == "stages: {}\n"
    capsys.readouterr()
    assert cli.main(["init", ".", "--preset", "imagenet128"]) == 2  # exists: refused...
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "add --force" in err[0]
    assert load_params("params.yaml").data.resolution == 32  # ...and left as it was
    assert cli.main(["init", ".", "--preset", "imagenet128", "--force"]) == 0
    assert load_params("params.yaml").data.resolution == 128
    assert load_params("params.yaml.bak").data.resolution == 32  # the replaced file, kept
    assert "params.yaml.bak" in capsys.readouterr().out  # and said
    assert cli.main(["init", "other", "--preset", "cifar100"]) == 2
    err = capsys.readouterr().err
    assert "no such preset" in err and "cifar10, folder64, gray32, imagenet128" in err
    assert not (tmp_path / "other").exists()
