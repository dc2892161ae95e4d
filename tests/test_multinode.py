"""Several "nodes" on this machine: one `sagan train` per node, gloo, one process each, meeting at a
c10d rendezvous on 127.0.0.1 (docs/scale-out.md). Each node has its own project folder (no shared
disk): only global rank 0 writes a checkpoint, wherever the rendezvous puts it."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    BIN,
    REPO,
    SAGAN,
    TINY_CLI,
    assert_same_tensors,
    checkpoint_step,
    dvc,
    free_port,
    git,
    pipeline_project,
    run_cli,
    subset_prepared,
)

from sagan_core.config import Params

pytestmark = pytest.mark.e2e
ENV = {"OMP_NUM_THREADS": "1", "SAGAN_TRACKING": "0"}


def node_dir(root: Path, name: str, prepared: Path) -> Path:
    d = root / name
    shutil.copytree(prepared, d / "data/prepared")
    (d / "params.yaml").write_text(Params().model_dump_json())  # JSON is YAML
    return d


def start_node(project: Path, port: int, *args: str) -> subprocess.Popen:
    cmd = [
        *SAGAN,
        "train",
        *TINY_CLI,
        "--set",
        "train.nnodes=2",
        "--set",
        f"train.rdzv_endpoint=127.0.0.1:{port}",
    ]
    env = os.environ | {"PYTHONPATH": str(REPO)} | ENV
    return subprocess.Popen(
        [*cmd, *args],
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(procs: list[subprocess.Popen], timeout: int = 600) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        _, err = p.communicate(timeout=timeout)
        out.append((p.returncode, err))
    return out


def two_nodes(a: Path, b: Path, *args: str) -> list[tuple[int, str]]:
    port = free_port()
    return finish([start_node(a, port, *args), start_node(b, port, *args)])


def the_checkpoint(*nodes: Path) -> Path:
    """The one checkpoint the nodes wrote (global rank 0's node has it, the other none)."""
    found = [n / "models/checkpoint.pt" for n in nodes if (n / "models/checkpoint.pt").exists()]
    assert len(found) == 1, found
    return found[0]


def without_run_identity(ck: dict) -> dict:
    """The checkpoint less `params`/`fingerprint` (they name nnodes and the endpoint): every tensor,
    the step, RNG states, loader position, classes."""
    return {k: v for k, v in ck.items() if k not in ("params", "fingerprint")}


def test_two_nodes_train_bit_for_bit_as_two_processes_on_one(tmp_path, prepared_demo):
    a, b = node_dir(tmp_path, "a", prepared_demo), node_dir(tmp_path, "b", prepared_demo)
    for code, err in two_nodes(a, b, "--set", "train.steps=2"):
        assert code == 0, err[-3000:]
    one = node_dir(tmp_path, "one", prepared_demo)
    r = run_cli(["train", *TINY_CLI, "--set", "train.steps=2", "--set", "train.nproc_per_node=2"], one, ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    multi = torch.load(the_checkpoint(a, b), weights_only=True)
    single = torch.load(one / "models/checkpoint.pt", weights_only=True)
    assert multi["step"] == 2 and multi["params"]["train"]["nnodes"] == 2
    assert_same_tensors(without_run_identity(multi), without_run_identity(single))


def test_a_node_with_other_data_is_refused_before_training(tmp_path, prepared_demo):
    a, b = node_dir(tmp_path, "a", prepared_demo), node_dir(tmp_path, "b", prepared_demo)
    shutil.rmtree(b / "data/prepared")  # node b prepared something else (valid in itself)
    subset_prepared(prepared_demo, b / "data/prepared", 200)
    results = two_nodes(a, b, "--set", "train.steps=2")
    for code, err in results:
        assert code == 1, err[-3000:]
        assert "the prepared data differs between nodes" in err, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    # The node named is the one with the other data: whichever node rank the rendezvous gave it,
    # the message names one node and it is not rank 0's.
    line = next(x for x in results[0][1].splitlines() if "differs between nodes" in x)
    named = re.findall(r"node (\d+) \((.+?)\)", line)  # the odd node, and rank 0's it differs from
    assert len(named) == 2 and named[0][0] != named[1][0], line
    assert named[0][1] == named[1][1] == socket.gethostname()
    assert not any(checkpoint_step(n / "models/checkpoint.pt") for n in (a, b))  # never trained


def test_a_killed_node_ends_the_other_and_both_resume(tmp_path, prepared_demo):
    a, b = node_dir(tmp_path, "a", prepared_demo), node_dir(tmp_path, "b", prepared_demo)
    args = (
        "--set",
        "train.steps=400",
        "--set",
        "train.checkpoint_every=2",
        "--set",
        "train.sample_every=1000",
    )
    port = free_port()
    pa, pb = start_node(a, port, *args), start_node(b, port, *args)
    while not any(checkpoint_step(n / "models/checkpoint.pt") for n in (a, b)):  # training has begun
        assert pa.poll() is None and pb.poll() is None, (pa.communicate(), pb.communicate())
        time.sleep(0.5)
    os.killpg(pb.pid, signal.SIGKILL)  # node b dies: `sagan train`, torchrun and its rank
    code, err = finish([pa], timeout=300)[0]  # bounded: gloo sees the closed connection
    assert code == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "lost contact with the other training processes" in err.strip().splitlines()[-1]
    pb.wait()
    saved = checkpoint_step(the_checkpoint(a, b))  # on rank 0's node only: no shared disk
    assert 0 < saved < 400
    resumed = ("--set", "train.steps=" + str(saved + 2), "--set", "train.checkpoint_every=2", "--resume")
    results = two_nodes(a, b, *resumed)
    for code, err in results:
        assert code == 0, err[-3000:]
    assert any(f"at step {saved}" in e and "resumed from" in e for _, e in results)
    # Before resuming, the node without the checkpoint received it (rank 0 may be either node now):
    # both hold one, rank 0's at the new end, the other's at least at the resumed step.
    steps = sorted(checkpoint_step(n / "models/checkpoint.pt") or 0 for n in (a, b))
    assert steps[1] == saved + 2 and steps[0] in (saved, saved + 2), steps


@contextlib.contextmanager
def dvc_bucket():
    """An S3 bucket on a moto server on 127.0.0.1, and the environment that reaches it."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        keys = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket="sagan-dvc")
        env = (
            os.environ
            | ENV
            | keys
            | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO)}
        )
        env |= {
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        }
        yield endpoint, env
    finally:
        server.stop()


def test_a_fresh_node_pulls_data_from_dvc_and_resumes_from_mlflow(tmp_path):
    """A node with nothing but a clone of the project: `dvc pull prepare` from the S3 remote (moto on
    127.0.0.1), then `sagan train --resume-from runs:/ID` from the MLflow store, and trains on."""
    import json

    with dvc_bucket() as (endpoint, env):
        origin = pipeline_project(tmp_path / "origin", dvc=True)
        dvc(["remote", "add", "-d", "s3", "s3://sagan-dvc/store"], origin, env)
        dvc(["remote", "modify", "s3", "endpointurl", endpoint], origin, env)
        dvc(["repro", "prepare"], origin, env)
        dvc(["push", "prepare"], origin, env)
        git(["add", "-A"], origin, env)
        git(["commit", "-qm", "prepared, remote"], origin, env)
        store = tmp_path / "mlflow"  # the tracking server both nodes reach (here: one sqlite store)
        tracked = ["--set", f"tracking.uri=sqlite:///{store}/mlflow.db"]
        tracked += [
            "--set",
            f"tracking.artifact_location={store}/artifacts",
            "--set",
            "train.checkpoint_every=2",
        ]
        r = run_cli(
            ["train", "--quiet", "--set", "train.steps=2", *tracked], origin, env | {"SAGAN_TRACKING": "1"}
        )
        assert r.returncode == 0, r.stderr[-3000:]
        run_id = json.loads((origin / "models/mlflow_run.json").read_text())["run_id"]

        fresh = tmp_path / "fresh"  # a new machine: the project's files from git, nothing else
        git(["clone", "-q", str(origin), str(fresh)], tmp_path, env)
        assert not (fresh / "data/prepared").exists() and not (fresh / "models").exists()
        dvc(["pull", "prepare"], fresh, env)
        for name in ("images.npy", "labels.npy", "manifest.json"):
            assert (fresh / "data/prepared" / name).read_bytes() == (
                origin / "data/prepared" / name
            ).read_bytes()
        args = ["train", "--resume-from", f"runs:/{run_id}", "--set", "train.steps=4", *tracked]
        r = run_cli(args, fresh, env | {"SAGAN_TRACKING": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        assert "at step 2" in r.stderr and "resumed from" in r.stderr, r.stderr[-2000:]
        assert checkpoint_step(fresh / "models/checkpoint.pt") == 4
