"""The flow as a Prefect user meets it: one params file + overrides, validation errors as the one-line
config message, notification hooks on failure and completion, and `sagan` log lines in the run's logs."""

from __future__ import annotations

import json
import re

import pytest
from helpers import fake_downstream, pipeline_project, run_cli
from test_secrets import BLOCK, save_block, server  # noqa: F401 - server: a fixture

from pipelines.flow.pipeline import sagan_pipeline

pytestmark = pytest.mark.e2e


@pytest.mark.unit
def test_the_flow_takes_one_params_file_and_its_overrides():
    """No second schema of params.yaml: what a deployment's run gets (`sagan pipeline serve|deploy`
    store exactly these) validates as the flow's parameters; Params validates the values at the start."""
    schema = sagan_pipeline.parameters.model_dump()
    assert set(schema["properties"]) == {"params_file", "overrides", "force", "project_dir", "params"}
    stored = {
        "params_file": "params.yaml",
        "overrides": ["train.lr_g=3e-4"],
        "force": False,
        "project_dir": "/p",
    }
    assert sagan_pipeline.validate_parameters(stored) == stored | {"params": None}  # the CLI's own handover


# ---- against Prefect ---------------------------------------------------------------------------------
def test_a_bad_override_fails_the_run_with_the_one_line_config_message(prefect_api, tmp_path):
    proj = pipeline_project(tmp_path / "proj", dvc=False)
    state = sagan_pipeline(overrides=["train.lr_d=-1"], project_dir=str(proj), return_state=True)
    assert state.is_failed()
    assert "train.lr_d: expected a positive number, got -1" in state.message


def test_failure_and_completion_post_through_the_block_named_by_notify_block(
    prefect_api,
    tmp_path,
    monkeypatch,
    server,  # noqa: F811 - the fixture imported above
):
    save_block(server.url)  # the URL lives in the block, params hold its name
    notify = [f"pipeline.notify_block={BLOCK}"]
    missing = tmp_path / "missing"
    proj = pipeline_project(tmp_path / "fails", dvc=False, data__source=str(missing))
    state = sagan_pipeline(overrides=notify, project_dir=str(proj), return_state=True)
    assert state.is_failed()
    ((_, failed),) = server.hits
    assert failed["subject"].endswith(": Failed") and "stage prepare failed" in failed["text"]
    assert str(missing) in failed["text"]

    fake_downstream(monkeypatch)  # about the hooks, not FID or MLflow: a real prepare + train, then stand-ins
    monkeypatch.setenv("SAGAN_TRACKING", "1")  # tracking off skips register (its own test below)
    proj = pipeline_project(tmp_path / "completes", dvc=False, train__steps=2)
    summary = sagan_pipeline(overrides=notify, project_dir=str(proj))
    done = server.hits[1][1]
    assert done["subject"].endswith(": Completed") and summary.decision == "champion"
    assert f"{summary.model_name} v{summary.version}: champion" in done["text"]

    server.hits.clear()  # off by default: nothing is posted
    sagan_pipeline(project_dir=str(proj))
    assert server.hits == []


def test_sagan_log_lines_reach_the_flow_runs_logs_through_prefect_settings(prefect_api, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    proj = pipeline_project(tmp_path / "proj", dvc=False, train__steps=2)
    env = {"PREFECT_API_URL": prefect_api, "SAGAN_TRACKING": "0", "TORCH_HOME": str(tmp_path / "no-weights")}
    out = run_cli(["pipeline", "run"], proj, env, 600)
    assert out.returncode == 1 and "stage evaluate failed" in out.stderr  # offline: no Inception weights
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    ours = [log.message for log in logs if log.name == "sagan" or log.name.startswith("sagan.")]
    assert any("prepared" in m for m in ours), ours


def test_tracking_off_is_said_at_the_start_and_register_is_skipped_not_failed(
    prefect_api,
    tmp_path,
    server,  # noqa: F811 - the fixture imported above
    standin_torch_home,
):
    """SAGAN_TRACKING=0: prepare, train and evaluate run for real; the flow says at its start that the
    run will not be registered, skips register in one line and completes (it used to fail at register:
    'no MLflow run recorded')."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    save_block(server.url)
    proj = pipeline_project(tmp_path / "proj", dvc=False, train__steps=2)
    env = {"PREFECT_API_URL": prefect_api, "SAGAN_TRACKING": "0", "TORCH_HOME": str(standin_torch_home)}
    out = run_cli(["pipeline", "run", "--set", f"pipeline.notify_block={BLOCK}"], proj, env, 600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "registered  : skipped (tracking off: SAGAN_TRACKING=0)" in out.stdout, out.stdout
    assert json.loads((proj / "metrics/eval.json").read_text())["fid"] >= 0  # evaluate ran for real
    assert not (proj / "mlflow.db").exists()  # nothing was recorded in MLflow
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=1)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    assert run.state_name == "Completed"
    states = {t.name.rsplit("-", 1)[0]: t.state_name for t in tasks}
    assert states == dict.fromkeys(("prepare", "train", "evaluate", "register"), "Completed"), states
    (said,) = [g for g in logs if "will not be registered" in g.message]
    assert said.message == "tracking is off (SAGAN_TRACKING=0): the run will not be registered in MLflow"
    assert said.task_run_id is None  # the flow's own line, before any task logged
    assert all(said.timestamp < g.timestamp for g in logs if g.task_run_id is not None)
    register = {t.id for t in tasks if t.name.startswith("register")}
    ours = [g.message for g in logs if g.task_run_id in register and g.message.startswith("register")]
    assert len(ours) == 1 and re.fullmatch(  # one line, no failure
        r"register: skipped in \d+\.\d s \(tracking off: SAGAN_TRACKING=0\)", ours[0]
    ), ours
    ((_, done),) = server.hits
    assert (
        done["subject"].endswith(": Completed")
        and "not registered (tracking off: SAGAN_TRACKING=0)" in done["text"]
    )
