"""train.launcher kubernetes: the flow's train task submits the rendered manifests with `kubectl
apply`, waits for the Job and fails or succeeds with it.

There is no cluster and no kubectl here: `kubectl` on PATH is a STAND-IN (tests/standin_kubectl.py),
a test double for that absent binary that records what it is given and answers `get job` with
scripted statuses (docs/scale-out.md, "what was not run here"). The fast tests use it with scripted
Job outcomes; the slow one has it run the Job's `sagan train` arguments as one pod would, into a real
MLflow (sqlite) store, so the flow finds that run and fetches its checkpoint.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, checkpoint_step, fake_downstream, pipeline_project, run_cli

from pipelines.flow import kubernetes_train as k8s
from sagan_core.errors import ConfigError, SaganError
from sagan_core.params_file import apply_override, validate

pytestmark = pytest.mark.unit

K8S = ["train.launcher=kubernetes", "train.k8s_image=img:1", "train.k8s_repository=https://git.example/r.git"]
RUNNING = {"active": 2, "ready": 2}
COMPLETE = {"succeeded": 2, "conditions": [{"type": "Complete", "status": "True"}]}
FAILED = {
    "failed": 1,
    "conditions": [{"type": "Failed", "status": "True", "message": "BackoffLimitExceeded"}],
}


def load(sets: list[str]):
    raw: dict = {}
    for s in sets:
        apply_override(raw, s)
    return validate(raw)


@pytest.fixture
def kubectl(tmp_path, monkeypatch):
    """The stand-in `kubectl` first on PATH; returns a function that writes its script and its state
    folder (calls.jsonl, applied-N.yaml)."""
    bin_dir, state = tmp_path / "bin", tmp_path / "kubectl-state"
    bin_dir.mkdir()
    state.mkdir()
    exe = bin_dir / "kubectl"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} {REPO / "tests/standin_kubectl.py"} "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("STANDIN_KUBECTL_DIR", str(state))
    monkeypatch.setenv("PYTHONPATH", str(REPO))

    def script(**values) -> Path:
        (state / "script.json").write_text(json.dumps(values))
        return state

    return script


def calls(state: Path) -> list[list[str]]:
    return [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]


def test_config_names_the_key():
    with pytest.raises(ConfigError, match=r"^train\.k8s_image:"):
        load(["train.launcher=kubernetes"])
    with pytest.raises(ConfigError, match=r"^train\.k8s_repository:") as e:
        load([*K8S[:2], "train.k8s_repository=https://user:s3cret@git.example/r.git"])
    assert "s3cret" not in str(e.value)  # a token in the URL is never echoed
    with pytest.raises(ConfigError, match=r"^train\.k8s_name:"):
        load([*K8S, "train.k8s_name=Sagan_Train"])
    assert load([*K8S, "train.nnodes=4"]).train.rdzv_endpoint is None  # the manifests set it


@pytest.mark.e2e
def test_sagan_train_refuses_the_kubernetes_launcher(tmp_path):
    r = run_cli(["train", *[a for s in K8S for a in ("--set", s)]], tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "train.launcher" in r.stderr and "sagan pipeline run" in r.stderr


@pytest.mark.integration
def test_submit_applies_the_rendered_manifests_with_the_flows_params(kubectl):
    state = kubectl(statuses=[COMPLETE])
    params = load(
        [*K8S, "train.nnodes=3", "train.nproc_per_node=2", "train.lr_g=0.0003", "train.k8s_revision=v7"]
    )
    name = k8s.submit(params, "runs:/abc", log=lambda line: None)
    (applied,) = state.glob("applied-*.yaml")
    service, job = yaml.safe_load_all(applied.read_text())
    assert calls(state) == [["apply", "--namespace", "default", "-f", "-"]]
    assert service["metadata"]["name"] == job["metadata"]["name"] == name and name.startswith("sagan-train-")
    assert job["spec"]["completions"] == 3
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "img:1" and {"name": "SAGAN_REVISION", "value": "v7"} in container["env"]
    args = container["args"]
    assert args[args.index("--resume-from") + 1] == "runs:/abc"
    pod = load([args[i + 1] for i, a in enumerate(args) if a == "--set"])
    # the pods train the flow's params, as one node each of nnodes, meeting at pod 0 of this Job
    assert (pod.train.launcher, pod.train.nnodes, pod.train.nproc_per_node) == ("local", 3, 2)
    assert pod.train.rdzv_endpoint == f"{name}-0.{name}:{k8s.PORT}" and pod.train.rdzv_id == name
    differ = {k for k, v in pod.flat().items() if params.flat()[k] != v}
    assert differ == {"train.launcher", "train.rdzv_endpoint", "train.rdzv_id", "train.k8s_image"} | {
        "train.k8s_repository",
        "train.k8s_revision",
    }


@pytest.mark.integration
def test_wait_logs_progress_and_returns_when_the_job_completes(kubectl):
    state = kubectl(statuses=[{}, RUNNING, RUNNING, COMPLETE])
    lines: list[str] = []
    k8s.wait("sagan-train-1", "ns", timeout_s=600, poll_s=0.01, log=lines.append)
    assert [c[:3] for c in calls(state)] == [["get", "job", "sagan-train-1"]] * 4
    assert lines[0].startswith("job sagan-train-1: 0 active, 0 ready, 0 succeeded, 0 failed of 2 pods")
    assert lines[1].startswith("job sagan-train-1: 2 active, 2 ready")  # one line per change, not per poll
    assert lines[2].startswith("job sagan-train-1: 0 active, 0 ready, 2 succeeded")
    assert lines[3:] == ["job sagan-train-1 succeeded"]


@pytest.mark.integration
def test_a_failed_job_is_one_line_naming_the_failed_pod_and_index(kubectl):
    pod = {
        "metadata": {
            "name": "sagan-train-1-x2",
            "annotations": {"batch.kubernetes.io/job-completion-index": "1"},
        },
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"state": {"terminated": {"reason": "Error", "exitCode": 1}}}],
        },
    }
    ok = {"metadata": {"name": "sagan-train-1-a0"}, "status": {"phase": "Running"}}
    kubectl(statuses=[RUNNING, FAILED], pods=[ok, pod])
    with pytest.raises(SaganError) as e:
        k8s.wait("sagan-train-1", "ns", timeout_s=600, poll_s=0.01, log=lambda line: None)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("kubernetes job sagan-train-1 failed: BackoffLimitExceeded")
    assert "pod sagan-train-1-x2 (index 1): Error (exit code 1)" in msg and "a0" not in msg
    assert "lost a peer" in msg  # the pods' last lines


@pytest.mark.integration
def test_a_job_that_never_finishes_times_out_and_is_deleted(kubectl):
    state = kubectl(statuses=[RUNNING])
    with pytest.raises(SaganError, match=r"^kubernetes job sagan-train-1 not done after 0 s: deleted"):
        k8s.wait("sagan-train-1", "ns", timeout_s=0.05, poll_s=0.01, log=lambda line: None)
    assert calls(state)[-1] == [
        "delete",
        "job,service",
        "sagan-train-1",
        "--namespace",
        "ns",
        "--ignore-not-found",
    ]


@pytest.mark.e2e
def test_flow_train_task_submits_waits_and_fetches_the_checkpoint(
    prefect_api, kubectl, tmp_path, monkeypatch
):
    from pipelines.flow.pipeline import StageFailed, sagan_pipeline

    fake_downstream(monkeypatch)
    proj = pipeline_project(tmp_path / "proj", dvc=False, train__steps=3)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sets = [*K8S, "train.k8s_revision=v1", "train.k8s_poll_s=0.05", f"tracking.uri={uri}"]
    sets.append(f"tracking.artifact_location={tmp_path / 'artifacts'}")
    monkeypatch.setenv("SAGAN_TRACKING", "1")
    monkeypatch.setenv("STANDIN_PROJECT", str(proj))
    state = kubectl(statuses=[RUNNING, COMPLETE], run_pod=str(tmp_path / "pod0"))
    result = sagan_pipeline(project_dir=str(proj), overrides=sets)
    assert (tmp_path / "pod0/models/checkpoint.pt").is_file(), (tmp_path / "pod0/train.log").read_text()
    # the checkpoint the pod trained (and uploaded to MLflow) is now the project's, and its run's
    assert checkpoint_step(proj / "models/checkpoint.pt") == 3 and result.step == 3
    assert (proj / "models/checkpoint.pt").read_bytes() == (
        tmp_path / "pod0/models/checkpoint.pt"
    ).read_bytes()
    pod_run = json.loads((tmp_path / "pod0/models/mlflow_run.json").read_text())["run_id"]
    assert json.loads((proj / "models/mlflow_run.json").read_text())["run_id"] == pod_run
    assert (tmp_path / "pod0/exit_code").read_text().strip() == "0"
    assert [c[0] for c in calls(state)].count("apply") == 1 and calls(state)[-1][:2] == ["get", "job"]

    (tmp_path / "kubectl-state/polls").unlink()
    kubectl(statuses=[FAILED], pods=[])
    with pytest.raises(StageFailed, match=r"^stage train failed: kubernetes job sagan-train-\w+ failed"):
        sagan_pipeline(project_dir=str(proj), overrides=[*sets, "train.steps=4"], force=True)


def test_where_it_trains_is_not_in_the_fingerprint():
    """A checkpoint trained by the pods resumes here and the other way round (same world size)."""
    from sagan_core.train import fingerprint

    local = load(["train.nnodes=2", "train.rdzv_endpoint=h:1"])
    cluster = load([*K8S, "train.nnodes=2", "train.k8s_namespace=ml", "train.k8s_revision=v2"])
    assert fingerprint.inputs(local, "h") == fingerprint.inputs(cluster, "h")
