"""Several "nodes" on this machine: one `sagan train` per node, gloo, one process each, meeting at a
c10d rendezvous on 127.0.0.1 (docs/scale-out.md). Each node has its own project folder (no shared
disk): only global rank 0 writes a checkpoint, wherever the rendezvous puts it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    REPO,
    SAGAN,
    TINY_CLI,
    assert_same_tensors,
    checkpoint_step,
    free_port,
    run_cli,
    subset_prepared,
)

from sagan_core.config import Params

pytestmark = pytest.mark.slow
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
    assert line.count("node ") == 2  # the odd node, and rank 0's node it differs from
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
    saved = max(checkpoint_step(n / "models/checkpoint.pt") or 0 for n in (a, b))
    assert 0 < saved < 400
    resumed = ("--set", "train.steps=" + str(saved + 2), "--set", "train.checkpoint_every=2", "--resume")
    results = two_nodes(a, b, *resumed)
    for code, err in results:
        assert code == 0, err[-3000:]
    assert any(f"at step {saved}" in e and "resumed from" in e for _, e in results)
    # rank 0 now may be on the other node: it received the newest checkpoint before resuming
    steps = [checkpoint_step(n / "models/checkpoint.pt") for n in (a, b)]
    assert saved + 2 in steps, steps
