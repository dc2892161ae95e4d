"""Serving the registered generator: the truncation trick, and `mlflow models serve` answering a
table of class / n / seed / truncation with PNG images, over real HTTP: the copy `sagan sample
--verified-copy` checked, served with MLflow's pickle deserialization off; requests over the
image budget or with a seed out of range are answered 400 in one line, without a stack trace."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from helpers import cli, free_port, run_cli, stop_process_group, tiny_overrides

from pipelines.tracking.generator_pyfunc import truncated_normal

pytestmark = pytest.mark.e2e


def _truncated_normal_variance(t: float) -> float:
    """Variance of N(0, 1) conditioned on |z| <= t (closed form, independent of the sampler)."""
    pdf = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(t / math.sqrt(2))  # P(|z| <= t)
    return 1 - 2 * t * pdf / mass


@pytest.mark.unit
@pytest.mark.unit
def test_truncation_redraws_exactly_the_entries_beyond_t():
    t = 0.5
    plain = torch.randn(2048, 16, generator=torch.Generator().manual_seed(7))
    z = truncated_normal(2048, 16, t, torch.Generator().manual_seed(7))
    assert z.abs().max() <= t
    inside = plain.abs() <= t
    assert torch.equal(z[inside], plain[inside])  # entries within the bound are kept as drawn
    assert not torch.equal(z[~inside], plain[~inside].clamp(-t, t))  # the others redrawn, not clipped
    assert z.var().item() == pytest.approx(_truncated_normal_variance(t), rel=0.05)
    assert abs(z.mean().item()) < 0.01


@pytest.mark.unit
@pytest.mark.unit
def test_no_truncation_is_plain_noise_and_bad_values_are_refused():
    z = truncated_normal(8, 16, None, torch.Generator().manual_seed(3))
    assert torch.equal(z, torch.randn(8, 16, generator=torch.Generator().manual_seed(3)))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="truncation"):
            truncated_normal(2, 4, bad, torch.Generator())


@pytest.mark.unit
@pytest.mark.unit
def test_sample_refuses_a_bad_truncation_before_loading_anything(tmp_path):
    from pipelines.registry.sampling import sample
    from sagan_core.config import Params
    from sagan_core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^--truncation: expected a number >= 0.01, got 0.0$"):
        sample(Params(), str(tmp_path / "nowhere.pt"), 4, None, None, None, 0, None, truncation=0.0)


# ---- a real server ---------------------------------------------------------------------------------
MODEL = "sagan-served"


@pytest.fixture(scope="module")
def registered(tmp_path_factory, prepared_demo, standin_torch_home):
    """A tiny project trained, evaluated and registered into its own sqlite MLflow store."""
    project = tmp_path_factory.mktemp("served")
    shutil.copytree(prepared_demo, project / "data/prepared")
    raw = tiny_overrides(train__device="cpu", eval__device="cpu")
    raw["eval"] |= {"num_samples": 20, "batch_size": 20, "reference_size": 20, "kid_subset_size": 10}
    uri = f"sqlite:///{project / 'mlflow.db'}"
    raw["registry"] = {"model_name": MODEL}
    raw["tracking"] = {"experiment": "serving", "uri": uri}
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {"SAGAN_TRACKING": "1", "TORCH_HOME": str(standin_torch_home)}
    # the commands in this process (~15 s less): the commands as processes are test_mlflow's fixture
    for args in (["train", "-q"], ["evaluate", "-q"], ["register"]):
        r = cli(args, project, env)
        assert r.returncode == 0, f"sagan {args[0]}: {r.stderr[-3000:]}"
    return project, uri


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@contextlib.contextmanager
def _served(model_uri: str, tracking_uri: str, cwd: Path):
    port = free_port()
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow_bin, "models", "serve", "-m", model_uri, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    log = open(cwd / "serve.log", "w")  # noqa: SIM115 - closed below
    # as with the venv activated: mlflow starts `uvicorn` from PATH
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # the registry too: an MLFLOW_REGISTRY_URI left in this process's environment would win
    env = os.environ | {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_REGISTRY_URI": tracking_uri,
        "PATH": path,
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (cwd / "serve.log").read_text()[-3000:]
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://127.0.0.1:{port}/ping") as r:
                if r.status == 200:
                    break
            assert time.monotonic() < deadline, (cwd / "serve.log").read_text()[-3000:]
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        stop_process_group(proc)
        log.close()


def _expected_pixels(project: Path, klass: int, n: int, seed: int, t: float | None) -> np.ndarray:
    """The local EMA generator's images for that request, quantized as a PNG stores them."""
    from sagan_core.model.checkpoint import load_generator

    g, _ = load_generator(project / "models/checkpoint.pt", use_ema=True)
    z = truncated_normal(n, g.spec.z_dim, t, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        images = g(z, torch.full((n,), klass)).clamp(-1, 1)
    return ((images + 1) / 2).mul(255).add(0.5).clamp(0, 255).to(torch.uint8)[:, 0].numpy()


@pytest.fixture(scope="module")
def served(registered, tmp_path_factory):
    """The champion as `sagan sample --verified-copy` checked and copied it, served over HTTP."""
    project, uri = registered
    copy = tmp_path_factory.mktemp("verified") / "champion"
    r = run_cli(["sample", "--model", f"models:/{MODEL}@champion", "--verified-copy", str(copy)], project)
    assert r.returncode == 0, r.stderr
    with _served(str(copy), uri, project) as url:
        yield url


def test_served_champion_answers_png_images_of_the_requested_classes(registered, served):
    from PIL import Image

    project, uri = registered
    rows = [{"class": "7", "n": 3, "seed": 1, "truncation": 0.7}, {"class": 2, "n": 2}]
    url = served  # the module's server (fixture `served`)
    status, answer = _post(url, {"dataframe_records": rows})
    assert status == 200, answer
    predictions = answer["predictions"]
    assert [p["class"] for p in predictions] == ["7", "7", "7", "2", "2"]
    assert [p["class_id"] for p in predictions] == [7, 7, 7, 2, 2]
    pixels = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(p["image"])))) for p in predictions])
    assert pixels.shape == (5, 32, 32) and pixels.dtype == np.uint8
    expected = np.concatenate(
        [_expected_pixels(project, 7, 3, 1, 0.7), _expected_pixels(project, 2, 2, 0, None)]
    )
    assert np.abs(pixels.astype(int) - expected).max() <= 1  # one quantization step at most
    status, answer = _post(url, {"dataframe_records": [{"class": "eleven", "n": 1}]})
    assert status >= 400 and "eleven" in json.dumps(answer)


def test_served_model_refuses_over_budget_and_huge_seeds_in_one_line(served):
    from pipelines.tracking.generator_pyfunc import MAX_IMAGES

    over = [{"class": "1", "n": 600}, {"class": "2", "n": 600}]  # each row within, the total not
    for rows, expected in (
        (over, f"budget of {MAX_IMAGES} images per request"),
        ([{"class": "1", "seed": 2**64}], "seed: expected a whole number 0 <= seed < 2**63"),
    ):
        status, answer = _post(served, {"dataframe_records": rows})
        body = json.dumps(answer)
        assert status == 400 and expected in answer["message"], body[-2000:]
        assert "Traceback" not in body and "stack_trace" not in answer, body[-2000:]


def test_sample_from_the_champion_with_truncation(registered, tmp_path):
    from PIL import Image

    project, uri = registered
    out = tmp_path / "each"
    args = ["sample", "--model", f"models:/{MODEL}@champion", "--n", "2", "--class", "4"]
    r = run_cli([*args, "--truncation", "0.5", "--seed", "5", "--out-dir", str(out)], project)
    assert r.returncode == 0, r.stderr
    got = np.stack([np.asarray(Image.open(out / f"sample_000{i}.png").convert("L")) for i in (0, 1)])
    assert np.abs(got.astype(int) - _expected_pixels(project, 4, 2, 5, 0.5)).max() <= 1


def test_registered_version_and_model_carry_model_cards(registered):
    from mlflow import MlflowClient

    project, uri = registered
    client = MlflowClient(uri, registry_uri=uri)
    champ = client.get_model_version_by_alias(MODEL, "champion")
    card = champ.description
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    ev = json.loads((project / "metrics/eval.record.json").read_text())
    for heading in ("## Data", "## Training", "## Evaluation", "## How to sample"):
        assert heading in card
    assert manifest["content_hash"] in card and f"{manifest['num_images']:,}" in card
    assert f"{len(manifest['class_names'])}: {', '.join(manifest['class_names'][:3])}" in card
    assert f"{ev['fid']:.4g}" in card and f"{ev['kid_mean']:.4g}" in card
    assert f"**Promotion: champion.** {champ.tags['promotion.reason']}" in card
    assert f"sagan sample --model models:/{MODEL}@champion" in card and f"models:/{MODEL}/" not in card
    for key in ("precision", "recall", "density", "coverage"):  # how it fails, beside the FID
        assert f"{ev[key]:.4g}" in card, key
    assert "| hardware | cpu × 1" in card and "| training time | 0 min" in card
    model = client.get_registered_model(MODEL)
    assert "@champion" in model.description and f"models:/{MODEL}@champion" in model.description
