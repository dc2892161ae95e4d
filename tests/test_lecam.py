"""LeCam (sagan_core/train/losses.py) against the paper's formula; with DiffAugment and LeCam off a
training step is bit-identical to the code before they existed; with both on resume is bit-exact;
both are in the checkpoint fingerprint."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from helpers import REPO, STATE_KEYS, assert_same_tensors, project_params, subset_prepared

from sagan_core.train import fingerprint
from sagan_core.train.losses import lecam, lecam_anchors
from sagan_core.train.trainer import train

pytestmark = pytest.mark.unit

# The last commit before train.diffaug / train.lecam_* existed: the golden training step.
BEFORE = "f44ed0c62834d5e0f7b542400a0007f854c6df8a"


def test_lecam_term_is_the_papers_formula():
    real, fake = torch.tensor([1.0, -0.5, 2.0]), torch.tensor([-1.0, 0.3])
    anchors = torch.tensor([0.5, -0.2])  # [alpha_R, alpha_F]
    # E[ReLU(D(x) - a_F)^2]: (1.2^2 + 0 + 2.2^2) / 3; E[ReLU(a_R - D(G(z)))^2]: (1.5^2 + 0.2^2) / 2
    want = (1.44 + 0.0 + 4.84) / 3 + (2.25 + 0.04) / 2
    assert lecam(real, fake, anchors).item() == pytest.approx(want, rel=1e-6)


def test_anchors_are_moving_averages_of_the_mean_outputs():
    a = lecam_anchors(None, torch.tensor([1.0, 3.0]), torch.tensor([-2.0]), decay=0.9)
    assert a.tolist() == pytest.approx([2.0, -2.0])
    a = lecam_anchors(a, torch.tensor([0.0]), torch.tensor([0.0, 2.0]), decay=0.9)
    assert a.tolist() == pytest.approx([0.9 * 2.0, 0.9 * -2.0 + 0.1 * 1.0])
    assert not a.requires_grad


def test_fingerprint_names_the_new_settings(project):
    off = fingerprint.record(project_params(project), "h")
    on = fingerprint.record(project_params(project, train__diffaug="color", train__lecam_weight=0.3), "h")
    assert fingerprint.changes(off, on) == ["train.diffaug: '' -> 'color'", "train.lecam_weight: 0.0 -> 0.3"]


def _old_code(tmp_path):
    """sagan_core as of BEFORE, extracted from git (skip where the history is not there)."""
    old = tmp_path / "old"
    old.mkdir()
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", BEFORE, "sagan_core"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip(f"git history with {BEFORE[:8]} not available")
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    return old


@pytest.mark.e2e  # a second Python process training with the old code
def test_off_is_bit_identical_to_the_code_before(tmp_path, prepared_demo):
    """3 steps with both options off == the same 3 steps run by the code before them (same checkpoint
    tensors and RNG states)."""
    old = _old_code(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    for p in (a, b):
        shutil.copytree(prepared_demo, p / "data/prepared")
    extra = {"train__steps": 3, "train__n_dis": 2, "data__hflip": True}
    train(project_params(a, **extra), progress=False)
    raw = project_params(b, **extra).model_dump(mode="json")
    # Keys the old code does not know (DiffAugment, LeCam and whatever came later, all at their
    # defaults here) are dropped in the old process: it rejects unknown keys.
    script = (
        "import json,sys; from sagan_core.config import Params; from sagan_core.train.trainer import train; "
        "raw = json.loads(sys.argv[1]); "
        "raw = {s: {k: v for k, v in vals.items() if k in Params.model_fields[s].annotation.model_fields} "
        "for s, vals in raw.items() if s in Params.model_fields}; "
    )
    script += "train(Params.model_validate(raw), progress=False)"
    env = os.environ | {"PYTHONPATH": str(old)}
    subprocess.run([sys.executable, "-c", script, json.dumps(raw)], cwd=b, env=env, check=True)
    ca, cb = (torch.load(p / "models/checkpoint.pt", weights_only=True) for p in (a, b))
    for key in (*STATE_KEYS, "opt_g", "opt_d", "rng", "loader", "ema_n_averaged", "step"):
        assert_same_tensors(ca[key], cb[key], key)


@pytest.mark.integration
def test_resume_is_bit_exact_with_diffaug_and_lecam(tmp_path, prepared_demo):
    """The trainer's one bit-exact resume test: 3 steps + resume to 6 == 6 uninterrupted steps, bit for
    bit (weights, EMA, optimizers, RNGs including DiffAugment's, the loader, LeCam's averages), with
    every stateful option on: DiffAugment, LeCam, flips, the EMA started mid-run."""
    a, b = tmp_path / "a", tmp_path / "b"
    for p in (a, b):  # 20 images / batch 8: the resumed part crosses epochs
        subset_prepared(prepared_demo, p / "data/prepared", 20)
    extra = {
        "train__steps": 6,
        "train__checkpoint_every": 100,
        "train__ema_start": 2,
        "data__hflip": True,
        "train__diffaug": "color,translation,cutout",
        "train__lecam_weight": 0.3,
        "train__lecam_decay": 0.9,
    }
    train(project_params(a, **extra), progress=False)
    train(project_params(b, **(extra | {"train__steps": 3})), progress=False)
    assert torch.load(b / "models/checkpoint.pt", weights_only=True)["step"] == 3
    train(project_params(b, **extra), resume=True, progress=False)
    ca, cb = (torch.load(p / "models/checkpoint.pt", weights_only=True) for p in (a, b))
    assert ca["step"] == cb["step"] == 6
    assert "augment" in ca["rng"] and ca["lecam"].shape == (2,)
    for key in (*STATE_KEYS, "opt_g", "opt_d", "rng", "loader", "ema_n_averaged", "lecam"):
        assert_same_tensors(ca[key], cb[key], key)
    # the training curve of the resumed run is the uninterrupted one, without duplicate rows
    rows_a, rows_b = (
        list(csv.DictReader((p / "metrics/train.csv").read_text().splitlines())) for p in (a, b)
    )
    assert [r["step"] for r in rows_b] == [str(i) for i in range(1, 7)]
    assert [r["loss_d"] for r in rows_a] == [r["loss_d"] for r in rows_b]


def test_options_change_the_step(tmp_path, prepared_demo):
    """Each option on gives other weights than both off (it is wired in, not ignored)."""
    weights = {}
    for name, extra in {
        "off": {},
        "diffaug": {"train__diffaug": "translation"},
        "lecam": {"train__lecam_weight": 1.0},
    }.items():
        p = tmp_path / name
        shutil.copytree(prepared_demo, p / "data/prepared")
        train(project_params(p, train__steps=2, **extra), progress=False)
        weights[name] = torch.load(p / "models/checkpoint.pt", weights_only=True)["discriminator"]
    for name in ("diffaug", "lecam"):
        assert any(not torch.equal(weights["off"][k], weights[name][k]) for k in weights["off"]), name
