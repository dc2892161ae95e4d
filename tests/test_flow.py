"""The Prefect flow `sagan-pipeline` end to end on the tiny preset, against one temporary Prefect
server per session: failure and rerun, DVC staying the cache of record, kill -9 and resume, DDP.

Longer than 300 lines: the scenarios share one temporary Prefect server (a session fixture) and the
helpers that read back what a run recorded there (artifacts, graph inputs, past runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import REPO, SAGAN, checkpoint_step, dvc_status, fake_downstream, pipeline_project, run_cli
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines import stages
from pipelines.flow import pipeline as flow_mod
from pipelines.flow.console import short_console_errors
from pipelines.flow.pipeline import StageFailed, sagan_pipeline
from pipelines.lock import ProjectBusy, project_lock
from sagan_core.errors import ConfigError

pytestmark = pytest.mark.e2e
UP_TO_DATE = "Data and pipelines are up to date."


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def spy(monkeypatch, name: str, replacement=None) -> list:
    """Record calls of stages.NAME (optionally replacing it); the flow looks stages up at call time."""
    calls, real = [], getattr(stages, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return (replacement or real)(*args, **kwargs)

    monkeypatch.setattr(stages, name, wrapper)
    return calls


def artifacts(flow_run: str) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run]))
        )
    return {a.key: a.data for a in found if a.key}


def test_offline_evaluate_fails_then_rerun_continues_and_unchanged_run_trains_nothing(
    prefect_api, tmp_path, monkeypatch, standin_torch_home
):
    proj = pipeline_project(tmp_path / "proj", dvc=True)
    ckpt = proj / "models/checkpoint.pt"
    monkeypatch.setenv("SAGAN_TRACKING", "1")  # the real MLflow run, registry and promotion
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))  # offline, no Inception weights
    trains, registers = spy(monkeypatch, "train"), spy(monkeypatch, "register")

    with pytest.raises(StageFailed, match=r"^stage evaluate failed: .*Inception weights") as failed:
        sagan_pipeline(project_dir=str(proj))
    assert failed.value.stage == "evaluate"
    assert registers == [] and not (proj / "metrics/eval.json").exists()  # downstream never ran
    assert len(trains) == 1 and checkpoint_step(ckpt) == 4  # what was produced is kept...
    pending = dvc_status(proj)
    assert (
        "evaluate:" in pending and "train:" not in pending and "prepare:" not in pending
    )  # ...and committed
    trained = sha(ckpt)

    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))  # the weights are supplied
    second = sagan_pipeline(project_dir=str(proj))
    assert len(trains) == 1 and sha(ckpt) == trained and second.trained_steps == 0  # no retraining
    assert second.step == 4  # the report still says where the checkpoint is
    evaluated = json.loads((proj / "metrics/eval.json").read_text())
    assert second.fid == pytest.approx(evaluated["fid"]) and second.kid is not None
    assert second.decision == "champion" and isinstance(second.version, int)  # first model promoted
    assert dvc_status(proj) == UP_TO_DATE

    import mlflow

    run = mlflow.MlflowClient(f"sqlite:///{proj}/mlflow.db").get_run(second.mlflow_run)
    logged = {k for k in run.data.metrics if "fid" in k.lower() or "kid" in k.lower()}
    assert logged, run.data.metrics.keys()  # FID/KID are in the MLflow run
    found = artifacts(second.flow_run)
    assert {"sagan-summary", "sagan-runs", "sagan-result"} <= found.keys()
    assert f"{second.fid:.4g}" in found["sagan-summary"] and second.data_hash in found["sagan-summary"]
    assert "champion" in found["sagan-summary"]
    # the grid itself, inline (no MLflow UI needed to see it): the PNG of samples/latest.png, downscaled
    assert_inline_grid(found["sagan-summary"], proj / "samples/latest.png")
    assert_graph_edges(second.flow_run)
    # the run's link opens MLflow's model-training layout (3.17 ignores the experiment's kind tag there)
    link = f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}?workflowType=machine_learning"
    assert second.mlflow_url.endswith(link) and link in found["sagan-summary"]

    third = sagan_pipeline(project_dir=str(proj))  # nothing changed: nothing trains, same answer
    assert len(trains) == 1 and sha(ckpt) == trained and third.trained_steps == 0
    assert (third.version, third.decision) == (second.version, second.decision)
    assert dvc_status(proj) == UP_TO_DATE
    # past runs from Prefect's records: this project's three flow runs (the failed one too), newest first
    rows = json.loads(artifacts(third.flow_run)["sagan-runs"])
    assert [r["flow_run"] for r in rows[:2]] == [
        flow_run_name(third.flow_run),
        flow_run_name(second.flow_run),
    ]
    assert len(rows) == 3 and rows[0]["version"] == str(third.version) and rows[0]["state"] == "Running"
    assert rows[1]["state"] == "Completed" and rows[1]["fid"] == f"{second.fid:.4g}"
    assert rows[2]["state"] == "Failed" and rows[2]["fid"] == "-"


def flow_run_name(flow_run_id: str) -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).name


def assert_inline_grid(markdown: str, grid: Path) -> None:
    import base64
    import re

    from PIL import Image

    (data,) = re.findall(r"\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    inline = Image.open(io.BytesIO(base64.b64decode(data)))
    with Image.open(grid) as full:
        ratio = min(1.0, 320 / max(full.size))
        assert inline.size == (round(full.width * ratio), round(full.height * ratio))


def assert_graph_edges(flow_run_id: str) -> None:
    """Each task run's inputs name the task runs whose results it consumed (the UI's graph edges)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    by_id = {r.id: r.name.rsplit("-", 1)[0] for r in runs}
    upstream = {
        by_id[r.id]: {
            by_id[i.id]
            for inputs in r.task_inputs.values()
            for i in inputs
            if getattr(i, "id", None) in by_id
        }
        for r in runs
    }
    assert upstream == {
        "prepare": set(),
        "train": {"prepare"},
        "evaluate": {"train"},
        "register": {"train", "evaluate"},
    }, upstream


def test_failing_stage_stops_the_flow_and_names_stage_and_cause(prefect_api, tmp_path, monkeypatch):
    proj = pipeline_project(tmp_path / "proj", dvc=False, data__source=str(tmp_path / "missing"))
    trains = spy(monkeypatch, "train")
    with pytest.raises(StageFailed, match=r"^stage prepare failed: data\.source: .*missing"):
        sagan_pipeline(project_dir=str(proj))
    assert trains == []


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def test_kill9_during_training_then_rerun_resumes_and_matches_uninterrupted(
    prefect_api, tmp_path, monkeypatch
):
    fake_downstream(monkeypatch)
    steps = 10
    extra = {"train__steps": steps, "train__checkpoint_every": 1, "train__sample_every": steps}
    ref = pipeline_project(tmp_path / "uninterrupted", dvc=False, **extra)
    assert sagan_pipeline(project_dir=str(ref)).trained_steps == steps

    proj = pipeline_project(tmp_path / "killed", dvc=False, **extra)
    ckpt = proj / "models/checkpoint.pt"
    env = os.environ | {"PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen([*SAGAN, "pipeline", "run"], cwd=proj, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (ckpt.exists() and 2 <= (checkpoint_step(ckpt) or 0) < steps - 2):
            assert proc.poll() is None, "the flow ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = checkpoint_step(ckpt)
    assert 0 < killed_at < steps

    rerun = sagan_pipeline(project_dir=str(proj))  # the kernel released the killed run's lock
    assert rerun.step == steps and rerun.trained_steps <= steps - killed_at  # not from step 0
    got, want = (
        dict(_tensors(torch.load(p, weights_only=True))) for p in (ckpt, ref / "models/checkpoint.pt")
    )
    assert got.keys() == want.keys() and len(got) > 10
    different = [k for k in want if not torch.equal(got[k], want[k])]
    assert different == []


def test_train_task_runs_ddp_under_torchrun(prefect_api, tmp_path, monkeypatch):
    fake_downstream(monkeypatch)
    proj = pipeline_project(tmp_path / "ddp", dvc=False, train__nproc_per_node=2, train__steps=2)
    lines, real = [], flow_mod.get_run_logger

    class Recorder:  # keeps what the train task forwards from `sagan train` to the Prefect log
        def __init__(self):
            self.logger = real()

        def __getattr__(self, name):  # warning, error: the real logger's
            return getattr(self.logger, name)

        def info(self, msg, *args):
            lines.append(msg % args if args else msg)
            self.logger.info(msg, *args)

    monkeypatch.setattr(flow_mod, "get_run_logger", Recorder)
    result = sagan_pipeline(project_dir=str(proj))
    assert result.step == 2 and result.trained_steps == 2
    assert any("launching 2 processes" in line and "torch.distributed.run" in line for line in lines)


def test_concurrent_run_on_the_same_project_fails_clearly(prefect_api, tmp_path):
    proj = pipeline_project(tmp_path / "busy", dvc=False)
    with (
        project_lock(proj),
        pytest.raises(ProjectBusy, match=r"another sagan run holds the project lock \(pid \d+ on host"),
    ):
        sagan_pipeline(project_dir=str(proj))
    assert not (proj / "data/prepared").exists()  # it touched nothing


@task(cache_policy=NO_CACHE)
def _raise(kind: str) -> None:
    raise ConfigError("train.steps: expected an integer > 0") if kind == "own" else RuntimeError("a bug")


@flow
def _failing(kind: str) -> None:
    _raise(kind)


@contextlib.contextmanager
def console_text() -> Iterator[io.StringIO]:
    """What Prefect's console handler prints (pytest's capture already holds its original stream)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    buf = io.StringIO()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    assert handlers
    saved = [h.console.file for h in handlers]  # it prints through a rich Console
    for h in handlers:
        h.console.file = buf
    try:
        yield buf
    finally:
        for h, stream in zip(handlers, saved, strict=True):
            h.console.file = stream


def test_pipeline_run_reports_a_stage_failure_in_one_line_without_traceback(prefect_api, tmp_path):
    proj = pipeline_project(tmp_path / "proj", dvc=False)
    missing = tmp_path / "missing.tar.gz"
    out = run_cli(
        ["pipeline", "run", "--set", f"data.source={missing}"], proj, {"PREFECT_API_URL": prefect_api}, 300
    )
    assert out.returncode == 1, out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("sagan: stage prepare failed: data.source:") and str(missing) in last
    assert "Traceback" not in out.stderr + out.stdout


def test_own_errors_reach_the_console_without_traceback_unexpected_ones_with(prefect_api):
    with console_text() as out, pytest.raises(ConfigError):
        _failing("own")  # Prefect's own console output, for reference
    assert "Traceback" in out.getvalue()

    with console_text() as out, short_console_errors(), pytest.raises(ConfigError):
        _failing("own")
    assert "train.steps: expected an integer > 0" in out.getvalue() and "Traceback" not in out.getvalue()

    with console_text() as out, short_console_errors(), pytest.raises(RuntimeError):
        _failing("bug")
    assert "Traceback" in out.getvalue()  # a bug keeps its traceback


def test_pipeline_run_validates_params_once_and_carries_them_to_every_stage(
    prefect_api, tmp_path, monkeypatch
):
    from pipelines.cli import main as cli
    from sagan_core import params_file

    fake_downstream(monkeypatch)
    monkeypatch.setenv("SAGAN_TRACKING", "1")  # tracking off skips register: the 4th stage would not run
    proj = pipeline_project(tmp_path / "once", dvc=False, train__steps=2)
    validated, seen = [], []

    def counting_validate(raw):
        validated.append(real_validate(raw))
        return validated[-1]

    real_validate = params_file.validate
    monkeypatch.setattr(params_file, "validate", counting_validate)
    for name in ("prepare", "train", "evaluate", "register"):
        real = getattr(stages, name)
        monkeypatch.setattr(
            stages, name, lambda params, *a, _real=real, **k: (seen.append(params), _real(params, *a, **k))[1]
        )
    monkeypatch.chdir(proj)
    assert cli.main(["pipeline", "run", "--set", "train.seed=3"]) == 0
    assert len(validated) == 1  # one validation in this process: the CLI's
    assert len(seen) == 4 and all(p is validated[0] for p in seen)  # the same object reached every stage
    assert validated[0].train.seed == 3
