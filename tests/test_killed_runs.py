"""Runs a killed process left behind (issue 31): after kill -9 of `sagan pipeline run`, MLflow and
Prefect runs stayed RUNNING forever, and the next run registered a new version under the killed
MLflow run (0 train/loss rows) with the previous run's weights. Now the next start marks them
(Prefect: Crashed, MLflow: KILLED), and register names the run that really trained the checkpoint,
or refuses one that did not finish training."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import cli, project_params, tiny_overrides

pytestmark = pytest.mark.integration  # trains, evaluates and registers (sqlite MLflow, in process)

MODEL = "sagan-killed"


def _project(root: Path, prepared_demo: Path) -> Path:
    shutil.copytree(prepared_demo, root / "data/prepared")
    raw = tiny_overrides(train__device="cpu", eval__device="cpu")
    raw["eval"] |= {"num_samples": 20, "batch_size": 20, "reference_size": 20, "kid_subset_size": 10}
    raw["registry"] = {"model_name": MODEL}
    raw["tracking"] = {"experiment": "killed", "uri": f"sqlite:///{root}/mlflow.db"}
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


def _client(project: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project}/mlflow.db"
    return MlflowClient(uri, registry_uri=uri)


def test_a_training_killed_before_its_checkpoint_is_neither_registered_nor_left_running(
    tmp_path, prepared_demo, standin_torch_home
):
    from pipelines.tracking.callback import MlflowCallback

    project = _project(tmp_path / "p", prepared_demo)
    env = {"SAGAN_TRACKING": "1", "TORCH_HOME": str(standin_torch_home)}
    for args in (["train", "-q"], ["evaluate", "-q"], ["register"]):
        r = cli(args, project, env)
        assert r.returncode == 0, f"sagan {args[0]}: {r.stderr[-2000:]}"
    client = _client(project)
    (v1,) = client.search_model_versions(f"name='{MODEL}'")
    trained_run = v1.run_id

    # A new training opens its MLflow run and records it, then is killed before its first checkpoint
    # (what `sagan train --force` / a forced flow run does first): models/checkpoint.pt is still v1's.
    params = project_params(project, yaml.safe_load((project / "params.yaml").read_text()))
    os.environ["SAGAN_TRACKING"] = "1"
    try:
        killed = MlflowCallback(params, resume=False).run_id
    finally:
        os.environ.pop("SAGAN_TRACKING")
    assert json.loads(params.train.run_record.read_text())["run_id"] == killed

    r = cli(["register"], project, env)
    assert r.returncode == 0, r.stderr
    versions = client.search_model_versions(f"name='{MODEL}'")
    assert [v.run_id for v in versions] == [trained_run]  # before: v2 under the killed run, v1's weights
    assert client.get_run(killed).info.status == "KILLED"  # before: RUNNING forever
    assert json.loads(params.train.run_record.read_text())["run_id"] == trained_run

    # A record whose run never wrote the checkpoint, with no run it replaced that did: refused.
    os.environ["SAGAN_TRACKING"] = "1"
    try:
        MlflowCallback(params, resume=False)
    finally:
        os.environ.pop("SAGAN_TRACKING")
    record = json.loads(params.train.run_record.read_text())
    params.train.run_record.write_text(json.dumps({k: v for k, v in record.items() if k != "previous"}))
    r = cli(["register"], project, env)
    assert r.returncode == 1, r.stderr
    (line,) = [x for x in r.stderr.strip().splitlines() if x.startswith("sagan:")]
    assert f"MLflow run {record['run_id']} did not finish training" in line and "wrote no checkpoint" in line
    assert len(client.search_model_versions(f"name='{MODEL}'")) == 1


def test_the_next_flow_run_marks_a_killed_flow_run_crashed(tmp_path, prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from pipelines.flow.history import project_tag
    from pipelines.flow.pipeline import sagan_pipeline
    from sagan_core.errors import SaganError

    project = tmp_path / "proj"
    project.mkdir()
    (project / "params.yaml").write_text("data: {source: no-such-folder}\ntracking: {enabled: false}\n")
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(gone.stdout)  # a process that has ended: the killed `sagan pipeline run`
    tag = project_tag(project)
    with get_client(sync_client=True) as client:  # what the killed run left: RUNNING, its process gone
        run = client.create_flow_run(
            sagan_pipeline, tags=[tag, f"process:{socket.gethostname()}:{dead_pid}"], state=Running()
        )
    with pytest.raises(SaganError, match="stage prepare failed"):
        sagan_pipeline(project_dir=str(project))
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run.id).state
    assert state.type.value == "CRASHED", state  # before: RUNNING forever
    assert f"pid {dead_pid}" in state.message


def test_a_stage_stuck_past_its_timeout_ends_the_run_in_one_line(tmp_path, prefect_api):
    """pipeline.stage_timeout_s is 6 h by default (it was null: a stuck stage held the project, and
    refused every later scheduled run, forever); a stage past it ends the run with its name."""
    import time

    from pipelines.flow.pipeline import sagan_pipeline
    from sagan_core.config import Params
    from sagan_core.errors import SaganError

    assert Params().pipeline.stage_timeout_s is not None  # every run is bounded unless a user opts out
    fifo = tmp_path / "stuck.png"  # prepare waits on it here: nothing ever writes to it
    os.mkfifo(fifo)
    project = tmp_path / "proj"
    project.mkdir()
    (project / "params.yaml").write_text(yaml.safe_dump({"tracking": {"enabled": False}}))
    from pipelines import stages

    started = time.monotonic()
    with pytest.MonkeyPatch.context() as mp:  # prepare stuck in a blocking read, as DVC was on a FIFO
        mp.setattr(stages, "check_source", lambda params, record=False: fifo.read_text())
        with pytest.raises(SaganError) as e:
            sagan_pipeline(project_dir=str(project), overrides=["pipeline.stage_timeout_s=2"])
    assert time.monotonic() - started < 60
    assert str(e.value) == "stage prepare failed: timed out after 2 s (pipeline.stage_timeout_s)"


@pytest.mark.unit
def test_a_run_record_written_before_the_typed_record_still_reads(tmp_path):
    """models/mlflow_run.json as sagan wrote it before RunRecord (model_id, best) reads, decides as it
    did, and round-trips."""
    from pipelines.tracking.run_record import UNKNOWN, RunRecord, read_run_record, write_run_record

    params = project_params(tmp_path)
    params.train.run_record.parent.mkdir(parents=True)
    run = {"experiment_id": "1", "tracking_uri": "sqlite:///x"}
    old = run | {"run_id": "b", "checkpoint_step": 4, "model_id": "m-1", "step": 4, "best": {"model_id": "m-0"}}
    params.train.run_record.write_text(json.dumps(old | {"previous": run | {"run_id": "a", "model_id": "m"}}))
    record = read_run_record(params)
    assert record == RunRecord("b", "1", "sqlite:///x", step=4, checkpoint_step=4, previous=RunRecord("a", "1", "sqlite:///x"))
    assert record.trained(4, 10) and not record.trained(2, 10) and record.trained(10, 10) is False
    assert record.previous.checkpoint_step == UNKNOWN and record.previous.trained(2, 10)  # not recorded: trusted
    write_run_record(params, record)
    assert read_run_record(params) == record
