"""MLflow credentials stay secret, and tracking-server outages end clearly, against real servers.

One project is trained, evaluated and registered through the CLI with a password planted in
$MLFLOW_TRACKING_URI (the session's `mlflow server` ignores basic auth); the other cases reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, SAGAN, free_port, pipeline_project, project_params, run_cli, tiny_overrides

from pipelines.tracking.run_record import train_metric

pytestmark = pytest.mark.e2e  # a real mlflow server and S3 server, and CLI training runs

MARKER = "pw-sagan-marker-9d2e41"  # the planted password: it must show up nowhere
FAST_FAIL = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}


def with_password(uri: str) -> str:
    return uri.replace("http://", f"http://sagan:{MARKER}@", 1)


def write_params(project: Path, uri: str | None = None, **registry) -> None:
    raw = tiny_overrides(train__device="cpu", eval__device="cpu")
    raw["eval"] |= {"num_samples": 20, "batch_size": 20, "reference_size": 40}
    raw["eval"] |= {"kid_subsets": 5, "kid_subset_size": 10}
    tracking = {k: registry.pop(k) for k in ("experiment", "artifact_location") if k in registry}
    raw["registry"] = {"model_name": "sagan-faults"} | registry
    raw["tracking"] = {"experiment": "sagan-faults"} | tracking | ({"uri": uri} if uri is not None else {})
    (project / "params.yaml").write_text(yaml.safe_dump(raw))


def error_line(stderr: str) -> str:
    """The command's one error line (INFO lines may precede it on stderr), last and alone."""
    lines = stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("sagan:")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0]


def client_for(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri, registry_uri=uri)


def copy_project(src: Path, dst: Path) -> Path:
    for sub in ("models", "metrics", "data"):
        shutil.copytree(src / sub, dst / sub)
    return dst


@pytest.fixture(scope="module")
def secret_project(tmp_path_factory, prepared_demo, mlflow_server, standin_torch_home):
    """(project, output of train/evaluate/register) with the password only in the environment."""
    project = tmp_path_factory.mktemp("secret")
    shutil.copytree(prepared_demo, project / "data/prepared")
    write_params(project)
    env = {
        "SAGAN_TRACKING": "1",
        "TORCH_HOME": str(standin_torch_home),
        "MLFLOW_TRACKING_URI": with_password(mlflow_server),
    }
    out = []
    for args in (["train", "-q"], ["evaluate", "-q"], ["register"]):
        r = run_cli(args, project, env)
        assert r.returncode == 0, f"sagan {args[0]}: {r.stderr[-3000:]}"
        out += [r.stdout, r.stderr]
    return project, "\n".join(out)


# ---- credentials ------------------------------------------------------------------------------------
def test_password_in_params_tracking_uri_is_a_config_error(tmp_path, mlflow_server):
    write_params(tmp_path, with_password(mlflow_server))
    r = run_cli(["train"], tmp_path, {"SAGAN_TRACKING": "1"})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "tracking.uri" in lines[0], r.stderr
    assert "MLFLOW_TRACKING_USERNAME" in lines[0] and "MLFLOW_TRACKING_TOKEN" in lines[0]
    assert MARKER not in r.stderr + r.stdout


def test_password_from_the_environment_is_stored_and_printed_nowhere(
    secret_project, mlflow_server, s3_server, tmp_path_factory
):
    project, output = secret_project
    assert MARKER not in output
    # the run really went to the server through the user-info URI
    record_text = (project / "models/mlflow_run.json").read_text()
    run = client_for(mlflow_server).get_run(json.loads(record_text)["run_id"])
    assert run.info.status == "FINISHED" and "eval/fid" in run.data.metrics
    assert MARKER not in record_text
    assert MARKER not in (project / "params.yaml").read_text()
    ckpt = torch.load(project / "models/checkpoint.pt", map_location="cpu", weights_only=False)
    assert MARKER not in json.dumps(ckpt["params"], default=str)
    (db,) = Path(tmp_path_factory.getbasetemp()).glob("mlflow_server[0-9]*/mlflow.db")
    assert MARKER.encode() not in db.read_bytes()
    s3 = s3_server.client()
    keys = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_server.bucket)
        for o in page.get("Contents", [])
    ]
    assert any(run.info.run_id in k for k in keys)
    for key in keys:
        body = s3.get_object(Bucket=s3_server.bucket, Key=key)["Body"].read()
        assert MARKER.encode() not in body, key


# ---- evaluate checks the server before the Inception pass ------------------------------------------
def test_evaluate_fails_fast_when_the_server_is_unreachable(secret_project, tmp_path, standin_torch_home):
    work = copy_project(secret_project[0], tmp_path / "offline")
    dead = f"http://127.0.0.1:{free_port()}"
    write_params(work, dead)
    eval_json = work / "metrics/eval.json"
    before = eval_json.read_bytes()
    eval_json.write_text("{}")  # an evaluation that ran would rewrite it
    env = {"SAGAN_TRACKING": "1", "TORCH_HOME": str(standin_torch_home)} | FAST_FAIL
    r = run_cli(["evaluate", "-q"], work, env)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and dead in lines[0] and "unreachable" in lines[0], r.stderr
    assert eval_json.read_text() == "{}", "the FID was computed before the server was checked"
    assert before


# ---- artifact-store failures name the side that failed ---------------------------------------------
def record_new_run(project: Path, uri: str, **registry) -> str:
    """params.yaml at `uri` and a run record naming a new run there (no model logged yet)."""
    from pipelines.tracking.run_record import RunRecord, write_run_record
    from pipelines.tracking.store import experiment_id

    write_params(project, uri, **registry)
    params = project_params(project, yaml.safe_load((project / "params.yaml").read_text()))
    client = client_for(uri)
    exp = experiment_id(client, params, uri)
    run_id = client.create_run(exp).info.run_id
    (project / "models/mlflow_run.json").unlink()
    write_run_record(params, RunRecord(run_id, exp, uri))
    return run_id


def test_server_side_bucket_missing_says_the_server_could_not_store(secret_project, s3_server, tmp_path):
    from mlflow_fixtures import MlflowServer

    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server", s3_server, "s3://no-such-bucket/artifacts").start()
    try:
        work = copy_project(secret_project[0], tmp_path / "p")
        record_new_run(work, server.uri)
        r = run_cli(["register"], work, {"SAGAN_TRACKING": "1"} | FAST_FAIL)
    finally:
        server.stop()
    assert r.returncode == 1
    line = error_line(r.stderr)
    assert "could not store" in line and server.uri in line and "bucket" in line, line
    assert "unreachable" not in line and "500 error responses" not in line, line


def test_client_side_s3_down_during_register_names_bucket_not_server(
    secret_project, mlflow_server, s3_server, tmp_path
):
    work = copy_project(secret_project[0], tmp_path / "p")
    record_new_run(
        work, mlflow_server, experiment="s3-down", artifact_location=f"s3://{s3_server.bucket}/down"
    )
    dead = f"http://127.0.0.1:{free_port()}"
    env = {"SAGAN_TRACKING": "1", "MLFLOW_S3_ENDPOINT_URL": dead, "AWS_MAX_ATTEMPTS": "2"} | FAST_FAIL
    r = run_cli(["register"], work, env | {k: v for k, v in s3_server.env().items() if k.startswith("AWS_")})
    assert r.returncode == 1
    line = error_line(r.stderr)
    assert f"'{s3_server.bucket}'" in line and dead in line, line
    assert "tracking server" not in line and mlflow_server not in line, line


# ---- an outage mid-training: the next command backfills the curves and ends the run ----------------
def train_through_an_outage(project: Path, server) -> subprocess.CompletedProcess:
    """`sagan train` whose server is killed once a few steps are logged; it stays down to the end."""
    env = os.environ | {"PYTHONPATH": str(REPO), "SAGAN_TRACKING": "1"} | FAST_FAIL
    proc = subprocess.Popen(
        [*SAGAN, "train", "-q"],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    csv_file, deadline = project / "metrics/train.csv", time.monotonic() + 300
    while not (csv_file.exists() and len(csv_file.read_text().splitlines()) > 4):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.1)
    server.stop()
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_outage_mid_training_is_backfilled_and_the_run_ended(
    prepared_demo, s3_server, tmp_path, standin_torch_home
):
    from mlflow_fixtures import MlflowServer

    project = tmp_path / "p"
    shutil.copytree(prepared_demo, project / "data/prepared")
    (tmp_path / "server").mkdir()
    server = MlflowServer(tmp_path / "server", s3_server, f"s3://{s3_server.bucket}/outage").start()
    try:
        write_params(project, server.uri)
        raw = yaml.safe_load((project / "params.yaml").read_text())
        raw["train"] |= {"steps": 30, "sample_every": 30, "checkpoint_every": 30}
        (project / "params.yaml").write_text(yaml.safe_dump(raw))
        r = train_through_an_outage(project, server)
        assert r.returncode == 1 and "unreachable" in error_line(r.stderr)
        server.start()  # back, same port and store
        client = client_for(server.uri)
        run_id = json.loads((project / "models/mlflow_run.json").read_text())["run_id"]
        csv_rows = (project / "metrics/train.csv").read_text().splitlines()
        steps = [int(row.split(",")[0]) for row in csv_rows[1:]]
        assert steps[-1] == 30
        assert client.get_run(run_id).info.status == "RUNNING"
        assert len(client.get_metric_history(run_id, "train/loss_d")) < len(steps)  # the outage lost points
        r = run_cli(
            ["evaluate", "-q"], project, {"SAGAN_TRACKING": "1", "TORCH_HOME": str(standin_torch_home)}
        )
        assert r.returncode == 0, r.stderr
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and "eval/fid" in run.data.metrics
        for key in csv_rows[0].split(",")[1:]:
            if key in ("lr_g", "lr_d"):  # logged only when they change (tracking/run_record.py)
                continue
            history = client.get_metric_history(run_id, train_metric(key))
            assert sorted(m.step for m in history) == steps, key
    finally:
        server.stop()


def test_pipeline_run_keeps_the_password_out_of_prefect_and_its_output(
    tmp_path, mlflow_server, prefect_api, standin_torch_home
):
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL

    proj = pipeline_project(tmp_path / "flow", dvc=False, registry__model_name="sagan-faults-flow")
    env = {"SAGAN_TRACKING": "1", "TORCH_HOME": str(standin_torch_home), "PREFECT_API_URL": prefect_api}
    r = run_cli(["pipeline", "run"], proj, env | {"MLFLOW_TRACKING_URI": with_password(mlflow_server)}, 600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "champion" in r.stdout and MARKER not in r.stdout + r.stderr
    assert MARKER not in (proj / "params.yaml").read_text()
    db = Path(PREFECT_SERVER_DATABASE_CONNECTION_URL.value().split(":///", 1)[1])
    files = list(db.parent.glob(db.name + "*"))  # the database and its -wal/-shm companions
    assert db in files and all(MARKER.encode() not in f.read_bytes() for f in files)


@pytest.mark.integration
@pytest.mark.unit
def test_final_report_of_pipeline_run_shows_no_password(monkeypatch):
    from pipelines.flow.report import RunSummary, final_report
    from sagan_core.config import Params

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:report-secret-51@127.0.0.1:5999")
    summary = RunSummary(
        "t",
        "flow",
        "abc",
        4,
        4,
        "models/checkpoint.pt",
        "samples/latest.png",
        1.0,
        None,
        1.0,
        "m",
        1,
        4,
        1.0,
        "champion",
        "r",
        "run",
        None,
        "http://127.0.0.1:5999",
        "not used",
    )
    text = final_report(summary, Params())
    assert "report-secret-51" not in text and "http://127.0.0.1:5999" in text
