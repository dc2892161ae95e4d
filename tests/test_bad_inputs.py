"""User mistakes and damaged inputs end in one line (never a traceback); resume and the NaN guard.

Unreadable or empty params files, booleans and inf/NaN as numbers, allocation-sized values, a damaged
prepared manifest, damaged, malicious or foreign checkpoints, an OSError naming a file (refused
writes: test_disk_full.py); next to them, changed learning rates on resume and non-finite optimizer
state.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from helpers import TINY_CLI, cli, project_params

from sagan_core.data.dataset import open_prepared
from sagan_core.errors import ConfigError, SaganError
from sagan_core.model import checkpoint as ckpt_io
from sagan_core.params_file import load_params
from sagan_core.train.progress import Callback
from sagan_core.train.trainer import TrainingDiverged, train

pytestmark = pytest.mark.unit


def one_line(r, code: int, *fragments: str) -> str:
    """The CLI failed with `code`, one `sagan: ` line on stderr holding every fragment, no traceback."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, r.stderr
    assert len(lines) == 1 and lines[0].startswith("sagan: "), r.stderr
    assert "Traceback" not in r.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]


# ---- the params file ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("latin1.yaml", lambda p: p.write_bytes(b"train:\n  steps: 3 # \xe9t\xe9\n"), "not UTF-8"),
        ("adir", lambda p: p.mkdir(), "Is a directory"),
        ("empty.yaml", lambda p: p.write_text(""), "empty"),
        ("comments.yaml", lambda p: p.write_text("# nothing here\n\n  # at all\n"), "empty"),
    ],
)
def test_unusable_params_file_is_one_line_exit_2(tmp_path, name, make, message):
    make(tmp_path / name)
    r = cli(["train", "--params", name], cwd=tmp_path)
    one_line(r, 2, "sagan: error: ", name, message)


def test_absent_default_params_file_still_means_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_params().train.steps == 2000
    (tmp_path / "params.yaml").write_text("")  # present but empty: a mistake, not the defaults
    with pytest.raises(ConfigError, match="params.yaml: empty"):
        load_params()


# ---- values ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("train.steps=true", "train.steps: expected an integer, got True"),
        ("train.lr_d=true", "train.lr_d: expected a number, got True"),
        ("data.min_size=false", "data.min_size: expected an integer, got False"),
        ("train.lr_d=.inf", "train.lr_d: expected a finite number"),
        ("train.lr_d=nan", "train.lr_d: expected a finite number"),
        ("pipeline.retry_delay_s=.nan", "pipeline.retry_delay_s: expected a finite number"),
        ("model.z_dim=100000000", "model.z_dim: expected a number <= 4096"),
        ("model.g_ch=100000", "model.g_ch: expected a number <= 1024"),
        ("model.d_ch=100000", "model.d_ch: expected a number <= 1024"),
        ("train.batch_size=10000000", "train.batch_size: expected a number <= 8192"),
        ("eval.batch_size=10000000", "eval.batch_size: expected a number <= 4096"),
        ("train.seed=1180591620717411303424", "train.seed: expected a number <= 9223372036854775807"),
        ("eval.seed=-1", "eval.seed: expected a number >= 0"),
    ],
)
def test_bad_values_name_the_key(tmp_path, monkeypatch, assignment, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_params(overrides=[assignment])
    assert str(e.value).startswith(message), str(e.value)


def test_numbers_from_yaml_keep_working(tmp_path):
    (tmp_path / "p.yaml").write_text("train:\n  steps: '7'\n  lr_d: 1\nmodel:\n  z_dim: 4096\n")
    p = load_params(tmp_path / "p.yaml")
    assert (p.train.steps, p.train.lr_d, p.model.z_dim) == (7, 1.0, 4096)


def test_boolean_and_huge_values_on_the_cli(tmp_path):
    r = cli(["train", "--set", "train.steps=true"], cwd=tmp_path)
    one_line(r, 2, "sagan: error: train.steps: expected an integer, got True")
    r = cli(["train", "--set", "model.z_dim=100000000"], cwd=tmp_path)
    one_line(r, 2, "sagan: error: model.z_dim: expected a number <= 4096")


# ---- the prepared dataset -------------------------------------------------------------------------
def _manifest(project):
    return project / "data/prepared/manifest.json"


def _edit_manifest(project, **changes):
    path = _manifest(project)
    m = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            m.pop(k)
        else:
            m[k] = v
    path.write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda p: _manifest(p).write_text("{not json"), "manifest.json: not valid JSON"),
        (lambda p: _manifest(p).write_text("[1, 2]"), "manifest.json: expected a JSON object"),
        (lambda p: _edit_manifest(p, num_classes=None), "manifest.json: missing num_classes"),
        (lambda p: _edit_manifest(p, num_images=3), "manifest.json: num_images is 3"),
        (lambda p: _edit_manifest(p, resolution="big"), "manifest.json: resolution"),
        (
            lambda p: np.save(p / "data/prepared/labels.npy", np.zeros(3, dtype=np.int64)),
            "labels.npy: 3 labels",
        ),
    ],
)
def test_damaged_manifest_is_one_error(project, damage, message):
    damage(project)
    with pytest.raises(SaganError) as e:
        open_prepared(project / "data/prepared")
    assert message in str(e.value) and "run `sagan prepare` again" in str(e.value), str(e.value)
    assert "\n" not in str(e.value) and not isinstance(e.value, ConfigError)


def test_damaged_manifest_on_the_cli(project):
    _manifest(project).write_text("{not json")
    r = cli(["train", *TINY_CLI], cwd=project)
    one_line(r, 1, "manifest.json: not valid JSON", "run `sagan prepare` again")


# ---- checkpoints ----------------------------------------------------------------------------------
class Payload:
    """A pickle that would run code when loaded without weights_only (torch refuses it)."""

    def __reduce__(self):
        return (print, ("this should never run",))


def test_malicious_checkpoint_is_one_line(project):
    (project / "models").mkdir()
    torch.save({"step": 1, "x": Payload()}, project / "models/checkpoint.pt")
    r = cli(["train", "--resume", *TINY_CLI], cwd=project)
    line = one_line(r, 1, "models/checkpoint.pt", "not a sagan checkpoint")
    assert "weights_only" not in r.stderr and "this should never run" not in r.stdout + r.stderr, line


@pytest.fixture
def trained(trained_project):
    """A copy of the session's project with a 2-step checkpoint, and its params."""
    return trained_project, project_params(trained_project, train__steps=2)


def _rewrite(path, edit):
    ck = torch.load(path, weights_only=True)
    edit(ck)
    torch.save(ck, path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.pop("spec"), "missing spec"),
        (lambda c: c["spec"].pop("z_dim"), "spec: missing z_dim"),
        (lambda c: c["spec"].update(colour="blue"), "spec: unknown colour"),
        (lambda c: c["spec"].update(g_ch="wide"), "spec.g_ch: expected int, got 'wide'"),
        (lambda c: c["spec"].update(g_attn=16), "spec.g_attn: expected a list of int"),
        (lambda c: c.update(spec=[1, 2]), "spec: expected a mapping"),
    ],
)
def test_bad_checkpoint_spec_is_one_error(trained, edit, message):
    project, params = trained
    path = params.train.checkpoint
    _rewrite(path, edit)
    for load in (lambda: ckpt_io.load_generator(path), lambda: train(params, resume=True, progress=False)):
        with pytest.raises(SaganError) as e:
            load()
        assert str(e.value).startswith(str(path)) and message in str(e.value), str(e.value)
        assert "\n" not in str(e.value) and not isinstance(e.value, ConfigError)


@pytest.mark.parametrize("key", ["opt_g", "rng", "loader", "ema_n_averaged"])
def test_resume_from_a_checkpoint_missing_state(trained, key):
    project, params = trained
    _rewrite(params.train.checkpoint, lambda c: c.pop(key))
    with pytest.raises(SaganError, match=f"checkpoint.pt: .*missing {key}"):
        train(project_params(project, train__steps=4), resume=True, progress=False)


def test_resume_from_a_checkpoint_with_mismatched_state(trained):
    project, params = trained
    _rewrite(params.train.checkpoint, lambda c: c["opt_d"].update(param_groups=[]))
    with pytest.raises(SaganError, match="checkpoint.pt: .*opt_d") as e:
        train(project_params(project, train__steps=4), resume=True, progress=False)
    assert "\n" not in str(e.value)


# ---- an OSError naming a file -----------------------------------------------------------------------
def test_an_os_error_naming_a_file_is_one_line(tmp_path):
    """The CLI's last resort, for a failure no writer reported itself: a file where sagan makes its
    .sagan folder (the project lock's)."""
    (tmp_path / ".sagan").write_text("")
    one_line(cli(["prepare"], tmp_path), 1, "sagan: .sagan: EEXIST: File exists")


# ---- changed learning rates on resume -------------------------------------------------------------
class Capture(Callback):
    def on_step_end(self, step, state):
        self.lrs = (state.opt_g.param_groups[0]["lr"], state.opt_d.param_groups[0]["lr"])


def test_resume_applies_changed_learning_rates(trained, caplog):
    project, params = trained
    old_g = params.train.lr_g
    new = project_params(project, train__steps=3, train__lr_g=old_g / 2)
    cap = Capture()
    with caplog.at_level(logging.INFO, logger="sagan"):
        train(new, resume=True, progress=False, callbacks=[cap])
    assert cap.lrs == (old_g / 2, params.train.lr_d)
    ck = torch.load(params.train.checkpoint, weights_only=True)
    assert ck["opt_g"]["param_groups"][0]["lr"] == old_g / 2
    assert f"train.lr_g: {old_g} -> {old_g / 2} (applied on resume; no longer bit-exact)" in caplog.text
    assert "train.lr_d" not in caplog.text


# ---- the NaN guard covers optimizer state ---------------------------------------------------------
class PoisonAdam(Callback):
    """Puts inf into the generator optimizer's exp_avg after a given step (weights stay finite)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, step, state):
        if step == self.step:
            moments = next(iter(state.opt_g.state.values()))
            moments["exp_avg"].view(-1)[0] = float("inf")


@pytest.mark.parametrize("log_every", [1, 100])
def test_nan_guard_covers_optimizer_state(project, log_every):
    params = project_params(project, train__steps=6, train__checkpoint_every=2, train__log_every=log_every)
    with pytest.raises(TrainingDiverged, match="generator optimizer state not finite"):
        train(params, callbacks=[PoisonAdam(4)], progress=False)
    ck = torch.load(params.train.checkpoint, weights_only=True)
    assert ck["step"] == 2
