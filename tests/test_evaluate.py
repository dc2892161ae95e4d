"""`sagan evaluate`: eval.json with its protocol, the reference-statistics cache, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import eval_params, write_checkpoint

from sagan_core.evaluate import fid as F
from sagan_core.evaluate import protocol as E

pytestmark = pytest.mark.unit


@pytest.mark.integration
def test_evaluate_writes_protocol_and_cache_removes_reference_pass(project, monkeypatch, standin_torch_home):
    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))
    params = eval_params(project)
    write_checkpoint(project / "models/checkpoint.pt", seed=0)
    write_checkpoint(project / "models/other.pt", seed=1)

    passes = []
    real_pass = E.features_pass
    monkeypatch.setattr(E, "features_pass", lambda *a, **k: passes.append(k["desc"]) or real_pass(*a, **k))

    first = E.evaluate(params, progress=False)
    assert passes == ["reference", "samples"] and first["stats_cache"] == "miss"
    on_disk = json.loads((project / "metrics/eval.record.json").read_text())
    assert on_disk == json.loads(json.dumps(first))
    # eval.json holds the numbers alone, for `dvc metrics show` / `dvc exp show`
    numbers = json.loads((project / "metrics/eval.json").read_text())
    prdc_keys = {"precision", "recall", "density", "coverage"}
    assert set(numbers) == {"fid", "kid_mean", "kid_std", "is_mean", "is_std", "generator_step"} | prdc_keys
    assert all(0 <= numbers[k] <= 1 for k in prdc_keys - {"density"}) and numbers["density"] >= 0
    assert all(isinstance(v, (int, float)) for v in numbers.values())
    assert numbers["fid"] == on_disk["fid"] and numbers["generator_step"] == 7
    for key in ("fid", "is_mean", "is_std", "kid_mean", "kid_std"):
        assert np.isfinite(on_disk[key])
    assert on_disk["fid"] > 0 and on_disk["is_mean"] >= 1.0
    assert on_disk["num_samples"] == 20 and on_disk["reference_size"] == 20
    assert on_disk["reference_split"] == "prepared" and on_disk["generator_step"] == 7
    assert on_disk["ema"] is True and on_disk["class_balanced"] is True
    assert on_disk["weights_file"] == "pt_inception-2015-12-05-6726825d.pth"
    assert len(on_disk["weights_sha256"]) == 64
    cached = F.load_stats(first["stats_file"])  # pytorch-fid's format, plus features for KID
    assert cached.mu.shape == (64,) and cached.sigma.shape == (64, 64) and cached.features.shape == (20, 64)

    # Another checkpoint: no reference pass; the FID uses the same cached statistics.
    passes.clear()
    second = E.evaluate(params, checkpoint=project / "models/other.pt", progress=False)
    assert passes == ["samples"] and second["stats_cache"] == "hit"
    assert second["fid"] != first["fid"]
    # The same checkpoint again: same numbers (fixed seed; cached reference == computed reference).
    passes.clear()
    again = E.evaluate(params, progress=False)
    assert passes == ["samples"] and again["fid"] == pytest.approx(first["fid"], abs=1e-9)
    assert again["kid_mean"] == pytest.approx(first["kid_mean"], abs=1e-12)

    # A statistics file made elsewhere (our cached file; pytorch-fid's format) as the reference.
    p2 = eval_params(project, eval__reference_split=first["stats_file"])
    passes.clear()
    from_file = E.evaluate(p2, progress=False)
    assert passes == ["samples"] and from_file["fid"] == pytest.approx(first["fid"], abs=1e-9)


def test_cache_key_changes_with_everything_that_changes_statistics():
    base = E.reference_protocol("c" * 64, "w" * 64, 2048, 1000, 10000)
    paths = {E.cache_path("x", base)}
    for change in (
        E.reference_protocol("d" * 64, "w" * 64, 2048, 1000, 10000),  # dataset content
        E.reference_protocol("c" * 64, "v" * 64, 2048, 1000, 10000),  # weights file
        E.reference_protocol("c" * 64, "w" * 64, 64, 1000, 10000),  # dims
        E.reference_protocol("c" * 64, "w" * 64, 2048, 2000, 10000),  # reference size
    ):
        paths.add(E.cache_path("x", change))
    assert len(paths) == 5
    assert E.cache_path("x", base) == E.cache_path("x", dict(base))


def test_reference_subset_is_fixed_and_sorted():
    a, b = E.reference_indices(100, 30), E.reference_indices(100, 30)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0) and len(set(a)) == 30
    assert np.array_equal(E.reference_indices(10, 30), np.arange(10))
    assert np.array_equal(E.reference_indices(10, None), np.arange(10))


@pytest.mark.unit
def test_evaluate_cli_errors(project, standin_torch_home, tmp_path):
    from helpers import cli

    env = {"TORCH_HOME": str(standin_torch_home)}
    sets = ["--set", "eval.device=cpu", "--set", "eval.num_samples=20", "--set", "eval.dims=64", "-q"]
    r = cli(["evaluate", *sets], project, env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "no checkpoint" in r.stderr and len(r.stderr.strip().splitlines()) == 1  # a usage error

    def check(extra, code, needle):
        r = cli(["evaluate", *sets, *extra], project, env)
        assert r.returncode == code, (extra, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1

    cases = []
    # A checkpoint whose weights don't match its recorded architecture: runtime failure.
    write_checkpoint(project / "models/checkpoint.pt", seed=0)
    ck = torch.load(project / "models/checkpoint.pt", weights_only=True)
    ck["spec"]["g_ch"] = 8
    torch.save(ck, project / "models/foreign.pt")
    cases.append((["--checkpoint", "models/foreign.pt"], 1, "do not match the architecture"))
    cases.append((["--set", "eval.reference_split=other.csv"], 2, "eval.reference_split"))
    cases.append((["--set", "eval.inception_weights=nope.pth"], 2, "eval.inception_weights"))
    (project / "bad.npz").write_bytes(b"not a zip")
    cases.append((["--set", "eval.reference_split=bad.npz"], 2, "bad.npz"))
    for extra, code, needle in cases:
        check(extra, code, needle)
    # Weights missing and not downloadable: exit 1 naming the file and where to put it.
    r = cli(["evaluate", *sets], project, {"TORCH_HOME": str(tmp_path / "th")} | _no_network())
    assert r.returncode == 1, r.stderr
    assert "pt_inception-2015-12-05-6726825d.pth" in r.stderr and str(tmp_path / "th" / "hub") in r.stderr


def _no_network() -> dict:
    # The sandbox has no route to GitHub; a dead proxy makes that certain (and quick) anywhere.
    return {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
