"""The `sagan` CLI as a user meets it: exit codes, one-line errors, prepare + train end to end."""

from __future__ import annotations

import csv

import pytest
import torch
from helpers import TINY_CLI as TINY
from helpers import cli, run_cli

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--set", "train.lr_d=-1"], "train.lr_d: expected a positive number, got -1"),
        (["train", "--set", "train.lr_dd=1"], "train.lr_dd: unknown key"),
        (["train", "--set", "model.g_ch=wide"], "model.g_ch: expected an integer, got 'wide'"),
        (
            ["train", "--set", "data.resolution=48"],
            "data.resolution: expected one of 32, 64, 128 or 256, got 48",
        ),
        (
            ["train", "--set", "model.g_attn=[64]"],
            "model.g_attn: attention at 64x64 does not fit 32-px images",
        ),
        (
            ["train", "--set", "model.d_attn=[32]"],
            "model.d_attn: no 32x32 feature map in the 32-px discriminator; valid: 16, 8",
        ),
        (["train", "--set", "train.steps"], "--set 'train.steps': expected key.path=value"),
        (["train", "--params", "missing.yaml"], "--params missing.yaml: no such file"),
        (["train", "--bogus"], "No such option: --bogus"),
        (["trian"], "No such command 'trian'"),
        (["train"], "no prepared dataset (run `sagan prepare` first)"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(tmp_path, args, message):
    (tmp_path / "params.yaml").write_text("train:\n  steps: 3\n")
    r = cli(args, cwd=tmp_path, env={"SAGAN_TRACKING": "1"})  # as users run it: MLflow on
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sagan: error: "), r.stderr
    assert message in lines[0]
    assert "Traceback" not in r.stderr


def test_bad_yaml_and_unknown_section(tmp_path):
    (tmp_path / "params.yaml").write_text("train: [1, 2\n")
    r = cli(["prepare"], cwd=tmp_path)
    assert r.returncode == 2 and "params.yaml: not valid YAML" in r.stderr
    (tmp_path / "params.yaml").write_text("trainer:\n  steps: 1\n")
    r = cli(["prepare"], cwd=tmp_path)
    assert r.returncode == 2 and "trainer: unknown key" in r.stderr


@pytest.mark.e2e
def test_the_real_command_exits_2_with_one_line_and_no_traceback(tmp_path):
    """The one subprocess check of exit code 2 (the cases above run the same entry point in process)."""
    r = run_cli(["train", "--set", "train.lr_dd=1"], cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["sagan: error: train.lr_dd: unknown key"], r.stderr


@pytest.mark.e2e  # the one subprocess check of exit code 0
def test_prepare_then_train_end_to_end(tmp_path):
    r = run_cli(["prepare"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "prepared 10000 images (10 classes" in r.stderr
    r = run_cli(
        [
            "train",
            *TINY,
            "--set",
            "train.steps=4",
            "--set",
            "train.log_every=2",
            "--set",
            "train.sample_every=2",
            "--set",
            "train.checkpoint_every=2",
        ],
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "step 4/4" in r.stderr  # progress lines when stderr is not a terminal
    ck = torch.load(tmp_path / "models/checkpoint.pt", weights_only=True)
    assert ck["step"] == 4
    for name in (
        "step_000000.png",
        "attention_step_000000.png",
        "step_000002.png",
        "step_000004.png",
        "latest.png",
        "attention.png",
        "attention_step_000004.png",
    ):
        assert (tmp_path / "samples" / name).stat().st_size > 0, name
    assert [r["step"] for r in csv.DictReader((tmp_path / "metrics/train.csv").read_text().splitlines())] == [
        "2",
        "4",
    ]
    # resume to 6 continues from 4
    r = run_cli(
        ["train", *TINY, "--resume", "--set", "train.steps=6", "--set", "train.log_every=2"], cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert "resumed from models/checkpoint.pt at step 4" in r.stderr
    assert torch.load(tmp_path / "models/checkpoint.pt", weights_only=True)["step"] == 6


@pytest.mark.e2e  # the one subprocess check of exit code 1
def test_runtime_failure_exits_1(tmp_path):
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/prepared/manifest.json").write_text("{}")
    (tmp_path / "data/prepared/images.npy").write_bytes(b"not numpy")
    r = run_cli(["train"], cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert "prepared dataset is damaged" in r.stderr and "Traceback" not in r.stderr
