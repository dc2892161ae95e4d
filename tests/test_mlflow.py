"""MLflow tracking, S3 artifacts, registry promotion gate and sampling, against real services.

One `mlflow server` (sqlite) with its artifacts on a moto S3 server, started once per session
(tests/mlflow_fixtures.py). One tiny training run goes through the real CLI (train -> evaluate ->
register -> sample); the promotion-gate cases reuse that run's logged generator with new runs and
chosen FIDs, so they test the gate itself without training again.

Longer than 300 lines: every case shares the session's servers and the module's one trained run
(the `trained` fixture); split across modules, that run would train once per module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from helpers import REPO, SAGAN, cli, free_port, project_params, run_cli, tiny_overrides
from mlflow_fixtures import SECRET_KEY

from sagan_core.config import Params

pytestmark = pytest.mark.e2e  # a real mlflow server and S3 server, and a CLI training run

MODEL = "sagan-e2e"


def write_params(project: Path, uri: str, **registry) -> Path:
    # a short evaluation protocol: 20 samples against a 40-image reference subset
    raw = tiny_overrides(train__device="cpu", eval__device="cpu")
    raw["eval"] |= {
        "num_samples": 20,
        "batch_size": 20,
        "reference_size": 40,
        "kid_subsets": 5,
        "kid_subset_size": 10,
    }
    tracking = {k: registry.pop(k) for k in ("experiment", "artifact_location") if k in registry}
    raw["registry"] = {"model_name": MODEL} | registry
    raw["tracking"] = {"experiment": "sagan-test", "uri": uri} | tracking
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    return project / "params.yaml"


def params_in(project: Path) -> Params:
    """The project's params.yaml with every output path inside the project."""
    return project_params(project, yaml.safe_load((project / "params.yaml").read_text()))


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared_demo, mlflow_server, standin_torch_home):
    """A project trained, evaluated and registered through the CLI against the S3-backed server."""
    project = tmp_path_factory.mktemp("e2e")
    shutil.copytree(prepared_demo, project / "data/prepared")
    write_params(project, mlflow_server)
    env = {"SAGAN_TRACKING": "1", "TORCH_HOME": str(standin_torch_home)}
    for args in (["train", "-q"], ["evaluate", "-q"], ["register"]):
        r = run_cli(args, project, env)
        assert r.returncode == 0, f"sagan {args[0]}: {r.stderr[-3000:]}"
    return project, r.stdout


def test_training_run_is_tracked_with_artifacts_on_s3(trained, mlflow_server, s3_server):
    project, _ = trained
    record = json.loads((project / "models/mlflow_run.json").read_text())
    client = client_for(mlflow_server)
    run = client.get_run(record["run_id"])
    params = params_in(project)
    # all params, flattened, as the validated params say
    assert run.data.params["train.steps"] == str(params.train.steps)
    assert run.data.params["model.g_ch"] == str(params.model.g_ch)
    assert set(params.flat()) <= set(run.data.params)
    # lineage: git commit and the prepared data's content_hash as the dataset input
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert run.data.tags["sagan.data.content_hash"] == manifest["content_hash"]
    assert run.data.tags["mlflow.source.git.commit"] == run.data.tags["sagan.git_commit"] != ""
    (ds,) = run.inputs.dataset_inputs
    assert ds.dataset.digest == manifest["content_hash"][:36]
    assert {t.key: t.value for t in ds.tags}["content_hash"] == manifest["content_hash"]
    # per-step curves: one point per log_every step, matching metrics/train.csv
    csv_rows = (project / "metrics/train.csv").read_text().splitlines()[1:]
    history = client.get_metric_history(run.info.run_id, "train/loss_d")
    assert [m.step for m in history] == [int(r.split(",")[0]) for r in csv_rows]
    # grouped into sections by prefix (MLflow's run page draws one section per prefix)
    for key in ("train/loss_g", "train/d_real", "train/d_fake", "attention/gamma_g0", "attention/gamma_d0"):
        assert key in run.data.metrics, key
    assert "train/img_per_s" in run.data.metrics
    # constant learning rates are params, not flat charts (tracking/run_record.py to_log)
    assert "train/lr_g" not in run.data.metrics and "train.lr_g" in run.data.params
    # evaluation joined the same run
    ev = json.loads((project / "metrics/eval.record.json").read_text())
    assert run.data.metrics["eval/fid"] == pytest.approx(ev["fid"])
    assert run.data.metrics["eval/is_mean"] == pytest.approx(ev["is_mean"])
    assert run.data.tags["sagan.eval.num_samples"] == str(ev["num_samples"])
    # images as a series (key + step), the attention figure, the checkpoint, the model
    images = [f.path for f in client.list_artifacts(run.info.run_id, "images")]
    for key in ("samples", "attention"):
        steps = {p.split("+")[2] for p in images if p.startswith(f"images/{key}+step+")}
        assert steps == {"0", "2", "4"}, (key, images)  # from step 0: MLflow's image cards open there
    # the latest grid and its preview (the model card's picture) are plain artifacts too
    assert sorted(f.path for f in client.list_artifacts(run.info.run_id, "samples")) == [
        "samples/latest.png",
        "samples/preview.png",
    ]
    assert [f.path for f in client.list_artifacts(run.info.run_id, "checkpoint")] == [
        "checkpoint/checkpoint.pt"
    ]
    assert client.list_artifacts(run.info.run_id, "figures")
    # ... and they really are in the S3 bucket
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_server.bucket)["Contents"]]
    assert any(k.endswith(f"{run.info.run_id}/artifacts/checkpoint/checkpoint.pt") for k in keys)
    assert any(k.endswith("model.pt2") for k in keys)
    # the checkpoint artifact resumes elsewhere: it is the local checkpoint, byte for byte
    local = Path(client.download_artifacts(run.info.run_id, "checkpoint/checkpoint.pt", str(project)))
    assert local.read_bytes() == (project / "models/checkpoint.pt").read_bytes()
    # never a credential
    everything = json.dumps([run.data.params, run.data.tags])
    assert SECRET_KEY not in everything and "AKIASAGAN" not in everything


def test_register_promote_load_and_sample(trained, mlflow_server, tmp_path):
    import mlflow

    from sagan_core.model.checkpoint import load_generator

    project, out = trained
    assert "champion" in out and MODEL in out
    client = client_for(mlflow_server)
    champ = client.get_model_version_by_alias(MODEL, "champion")
    run = client.get_run(champ.run_id)
    ev = json.loads((project / "metrics/eval.record.json").read_text())
    # lineage tags on the version
    assert float(champ.tags["fid"]) == pytest.approx(ev["fid"])
    assert champ.tags["content_hash"] == run.data.tags["sagan.data.content_hash"]
    assert champ.tags["git_commit"] == run.data.tags["sagan.git_commit"]
    assert json.loads(champ.tags["protocol"])["num_samples"] == ev["num_samples"]
    assert champ.tags["promotion.decision"] == "champion"
    assert "Unofficial Inception weights" in champ.description  # the suite evaluates with the stand-in

    # the pyfunc's tensor interface gives the local EMA generator's images for the same z / y
    mlflow.set_tracking_uri(mlflow_server)
    mlflow.set_registry_uri(mlflow_server)
    g, _ = load_generator(project / "models/checkpoint.pt", use_ema=True)
    z = torch.randn(5, g.spec.z_dim, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 1, 2, 3, 9])
    with torch.no_grad():
        expected = g(z, y).numpy()
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    got = served.unwrap_python_model().generate(z, y).numpy()
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert got.min() >= -1 and got.max() <= 1
    # ... and its table interface answers one PNG per image (tests/test_serving.py checks pixels)
    table = served.predict(pd.DataFrame([{"class": "3", "n": 2, "seed": 0}]))
    assert list(table["class_id"]) == [3, 3] and all(len(b) > 100 for b in table["image"])

    # registering the same run again creates no second version
    r = run_cli(["register"], project, {"SAGAN_TRACKING": "1"})
    assert r.returncode == 0, r.stderr
    assert "already registered" in r.stdout
    assert len(client.search_model_versions(f"name='{MODEL}' and run_id='{champ.run_id}'")) == 1


def test_sample_from_the_registry_and_from_a_checkpoint(trained, mlflow_server, tmp_path):
    """A grid from the registered champion, and one PNG per image from the local checkpoint."""
    from PIL import Image

    project, _ = trained
    grid, folder = tmp_path / "grid.png", tmp_path / "each"
    r = run_cli(
        ["sample", "--model", f"models:/{MODEL}@champion", "--n", "6", "--class", "3", "--out", str(grid)],
        project,
    )
    assert r.returncode == 0, r.stderr
    assert Image.open(grid).size[0] > 32
    r = cli(  # in this process (the command's process boundary is proven just above)
        ["sample", "--model", str(project / "models/checkpoint.pt"), "--n", "3", "--out-dir", str(folder)],
        project,
    )
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in folder.iterdir()) == [
        "sample_0000.png",
        "sample_0001.png",
        "sample_0002.png",
    ]
    assert Image.open(folder / "sample_0000.png").size == (32, 32)
    r = cli(["sample", "--model", f"models:/{MODEL}@champion", "--class", "10"], project)
    assert r.returncode == 2 and "--class" in r.stderr


# ---- promotion gate --------------------------------------------------------------------------------
PROTOCOL = {"num_samples": 64, "reference_split": "prepared", "reference_size": 100, "dims": 64}


def fake_run(
    root: Path,
    uri: str,
    trained_project: Path,
    fid: float,
    model: str,
    min_improvement: float = 0.0,
    **protocol,
) -> Params:
    """A new run with the trained run's checkpoint, and an evaluation record saying `fid`."""
    from pipelines.tracking.run_record import RunRecord, write_run_record
    from pipelines.tracking.store import experiment_id
    from sagan_core.model.checkpoint import step_of

    root.mkdir(parents=True)
    write_params(root, uri, model_name=model, min_improvement=min_improvement)
    params = params_in(root)
    params.train.checkpoint.parent.mkdir(parents=True)
    shutil.copy(trained_project / "models/checkpoint.pt", params.train.checkpoint)
    client = client_for(uri)
    exp = experiment_id(client, params, uri)
    run = client.create_run(exp, tags={"sagan.data.content_hash": "c0ffee", "sagan.git_commit": "abc"})
    write_run_record(params, RunRecord(run.info.run_id, exp, uri))
    (root / "metrics").mkdir()
    step = step_of(params.train.checkpoint)
    ev = {"fid": fid, "kid_mean": 0.01, "kid_std": 0.001, "generator_step": step} | PROTOCOL | protocol
    (root / "metrics/eval.record.json").write_text(json.dumps(ev))
    return params


def test_promotion_gate(trained, mlflow_server, tmp_path):
    from pipelines.registry import register as registry

    project, _ = trained
    client, name = client_for(mlflow_server), "gate-model"

    def reg(label, fid, **protocol):
        return registry.register(
            fake_run(tmp_path / label, mlflow_server, project, fid, name, 1.0, **protocol)
        )

    first = reg("first", 50.0)
    assert first.decision == "champion" and first.created
    better = reg("better", 40.0)
    assert better.decision == "champion"
    assert client.get_model_version_by_alias(name, "champion").version == str(better.version)
    worse = reg("worse", 45.0)
    assert worse.decision == "challenger"
    assert client.get_model_version_by_alias(name, "challenger").version == str(worse.version)
    within = reg("within-margin", 39.5)  # better, but not by more than min_improvement=1.0
    assert within.decision == "challenger" and "min_improvement" in within.reason
    other = reg("other-protocol", 10.0, num_samples=5000)  # not comparable, however good
    assert other.decision == "challenger" and "protocol" in other.reason
    champ = client.get_model_version_by_alias(name, "champion")
    assert champ.version == str(better.version)
    reason = client.get_model_version(name, str(worse.version)).tags["promotion.reason"]
    assert reason == worse.reason and "45" in reason
    # no lock left behind
    assert client.search_registered_models(f"name = '{name}.promotion-lock'") == []


def test_two_registers_race_for_champion(trained, mlflow_server, tmp_path):
    from pipelines.registry import register as registry

    project, _ = trained
    name = "race-model"
    client = client_for(mlflow_server)
    registry.register(fake_run(tmp_path / "old", mlflow_server, project, 40.0, name))
    dirs = {fid: tmp_path / f"fid{fid:g}" for fid in (30.0, 20.0)}
    for fid, d in dirs.items():
        fake_run(d, mlflow_server, project, fid, name)
    env = os.environ | {"PYTHONPATH": str(REPO), "SAGAN_TRACKING": "1"}
    procs = [
        subprocess.Popen(
            SAGAN + ["register"], cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for d in dirs.values()
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    best_run = json.loads((dirs[20.0] / "models/mlflow_run.json").read_text())["run_id"]
    champ = client.get_model_version_by_alias(name, "champion")
    assert champ.run_id == best_run and float(champ.tags["fid"]) == 20.0
    assert client.get_model_version(name, champ.version).tags["promotion.decision"] == "champion"


# ---- faults ----------------------------------------------------------------------------------------
def test_unreachable_tracking_server_is_a_clear_error(trained, tmp_path):
    project, _ = trained
    work = tmp_path / "offline"
    shutil.copytree(project / "models", work / "models")
    shutil.copytree(project / "metrics", work / "metrics")
    dead = f"http://127.0.0.1:{free_port()}"
    write_params(work, dead)
    before = (work / "models/mlflow_run.json").read_bytes()
    env = {
        "SAGAN_TRACKING": "1",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    }
    r = run_cli(["register"], work, env)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and dead in lines[0] and "unreachable" in lines[0], r.stderr
    # local state intact: the run record and checkpoint are untouched, register can be rerun later
    assert (work / "models/mlflow_run.json").read_bytes() == before
    assert (work / "models/checkpoint.pt").stat().st_size > 0


@pytest.mark.parametrize("fault", ["missing-bucket", "no-credentials"])
def test_s3_failure_names_bucket_and_leaves_no_version(
    fault,
    trained,
    mlflow_server,
    s3_server,
    tmp_path,
    monkeypatch,
):
    """Artifacts go straight from this client to S3 (experiment artifact_location s3://...)."""
    from pipelines.registry import register as registry
    from pipelines.tracking.run_record import RunRecord, write_run_record
    from pipelines.tracking.store import experiment_id
    from sagan_core.errors import SaganError

    project, _ = trained
    bucket = "no-such-bucket" if fault == "missing-bucket" else s3_server.bucket
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    if fault == "no-credentials":
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(k, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups
        # as in a fresh process: MLflow caches boto3 clients per endpoint, and boto3's default session
        # keeps the credentials it resolved earlier in this process
        import boto3
        from mlflow.store.artifact import s3_artifact_repo

        s3_artifact_repo._cached_get_s3_client.cache_clear()
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    name = f"s3-fault-{fault}"
    write_params(
        tmp_path, mlflow_server, model_name=name, experiment=name, artifact_location=f"s3://{bucket}/x"
    )
    params = params_in(tmp_path)
    client = client_for(mlflow_server)
    exp = experiment_id(client, params, mlflow_server)
    run = client.create_run(exp)
    write_run_record(params, RunRecord(run.info.run_id, exp, mlflow_server))
    shutil.copytree(
        project / "models",
        tmp_path / "models",
        ignore=shutil.ignore_patterns("mlflow_run.json"),
        dirs_exist_ok=True,
    )
    shutil.copytree(project / "metrics", tmp_path / "metrics")
    with pytest.raises(SaganError) as err:
        registry.register(params)
    msg = str(err.value)
    assert f"'{bucket}'" in msg and s3_server.endpoint in msg and "\n" not in msg
    assert client.search_model_versions(f"run_id='{run.info.run_id}'") == []
    assert SECRET_KEY not in msg
