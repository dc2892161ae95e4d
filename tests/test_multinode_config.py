"""train.nnodes / rdzv_endpoint validation and the torchrun command for several machines (fast lane;
the runs themselves are in test_multinode.py)."""

from __future__ import annotations

import pytest
from helpers import cli

from pipelines.launch import _Filter, rendezvous_args, torchrun_command
from sagan_core.config import Params
from sagan_core.errors import ConfigError
from sagan_core.params_file import apply_override, validate
from sagan_core.train import fingerprint

pytestmark = pytest.mark.unit


def load(sets: list[str]) -> Params:
    """The defaults with `--set`s, validated as the CLI validates them."""
    raw: dict = {}
    for s in sets:
        apply_override(raw, s)
    return validate(raw)


@pytest.mark.parametrize(
    "sets, key",
    [
        (["train.nnodes=2"], "train.rdzv_endpoint"),  # several machines need a meeting point
        (["train.nnodes=2", "train.rdzv_endpoint=host"], "train.rdzv_endpoint"),
        (["train.rdzv_endpoint=host:70000"], "train.rdzv_endpoint"),
        (["train.rdzv_endpoint=:29400"], "train.rdzv_endpoint"),
        (["train.nnodes=0"], "train.nnodes"),
        (["train.rdzv_id=a/b"], "train.rdzv_id"),
        (["train.dist_timeout_s=1"], "train.dist_timeout_s"),
    ],
)
def test_bad_values_name_the_key(sets, key):
    with pytest.raises(ConfigError) as e:
        load(sets)
    assert str(e.value).startswith(f"{key}:"), e.value


@pytest.mark.unit
def test_cli_exit_2_names_the_key(tmp_path):
    r = cli(["train", "--set", "train.nnodes=3"], tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "train.rdzv_endpoint" in r.stderr, r.stderr


def test_torchrun_arguments():
    one = load(["train.nproc_per_node=4"])
    assert rendezvous_args(one) == ["--standalone", "--nproc_per_node=4"]
    many = load(["train.nnodes=3", "train.rdzv_endpoint=10.0.0.1:29400", "train.rdzv_id=j7"])
    args = rendezvous_args(many)
    assert "--standalone" not in args
    assert {
        "--nnodes=3",
        "--nproc_per_node=1",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=10.0.0.1:29400",
    } <= set(args)
    assert {"--rdzv-id=j7", "--max-restarts=0"} <= set(args)
    cmd = torchrun_command("p.yaml", many, resume=True, quiet=False)
    assert cmd[cmd.index("pipelines.cli") :] == ["pipelines.cli", "train", "--params", "p.yaml", "--resume"]


def test_fingerprint_counts_machines_not_where_they_meet():
    base = Params()
    same = Params.model_validate({"train": {"rdzv_endpoint": "h:1", "rdzv_id": "x", "dist_timeout_s": 60}})
    assert fingerprint.record(base, "h")["sha256"] == fingerprint.record(same, "h")["sha256"]
    two = Params.model_validate({"train": {"nnodes": 2, "rdzv_endpoint": "h:1"}})
    assert fingerprint.record(base, "h")["sha256"] != fingerprint.record(two, "h")["sha256"]


def test_launcher_output_keeps_the_ranks_lines_not_torchrun_or_cpp_noise():
    """Lines as torchrun 2.14 and c10d print them when a rank fails (shortened)."""
    lines = [
        "launching 1 processes on each of 2 nodes",
        "[W1202 00:50:03.572896300 TCPStore.cpp:138] [c10d] recvValueWithTimeout failed on SocketImpl",
        "Exception raised from recvBytes at /__w/pytorch/pytorch/torch/csrc/distributed/c10d/Utils.hpp:790",
        "frame #0: c10::Error::Error(c10::SourceLocation) + 0x9d (0x7fb86475e60d in libc10.so)",
        "<omitting python frames>",
        "sagan: node 0 (vm), rank 0: lost contact with the other training processes (...)",
        "Traceback (most recent call last):",
        '  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 940, in main',
        "    run(args)",
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ",
        "============================================================",
        "pipelines.cli FAILED",
    ]
    kept: list[str] = []
    keep = _Filter(kept.append)
    for line in lines:
        keep(line)
    assert kept == [lines[0], lines[5]]


def test_a_ranks_own_traceback_is_kept():
    lines = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "ValueError: bug"]
    kept: list[str] = []
    keep = _Filter(kept.append)
    for line in lines:
        keep(line)
    assert kept == lines
