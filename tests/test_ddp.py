"""Two CPU processes with gloo: DDP keeps every rank's weights identical; the CLI relaunches itself."""

from __future__ import annotations

import pytest
import torch
from helpers import TINY_CLI, run_cli, run_two_rank_worker

from sagan_core.config import Params
from sagan_core.data.dataset import BatchLoader, open_prepared

pytestmark = pytest.mark.e2e


def test_two_gloo_processes_end_with_identical_weights(project):
    r0, r1 = run_two_rank_worker(project, {"OMP_NUM_THREADS": "1"})  # asserts identical weights
    assert r0["world"] == r1["world"] == 2
    ck = torch.load(project / "models/checkpoint.pt", weights_only=True)
    assert ck["step"] == 3
    for k, v in ck["generator"].items():  # rank 0 saved the shared weights
        assert torch.equal(v, r0["G"][k])


@pytest.mark.unit
@pytest.mark.unit
def test_ranks_read_disjoint_shards(prepared_demo):
    data = open_prepared(prepared_demo)
    seen = []
    for rank in (0, 1):
        loader = BatchLoader(data, batch_size=50, seed=3, rank=rank, world_size=2)
        loader._draw_epoch()
        seen.append(set(loader._order.tolist()))
    assert not seen[0] & seen[1]
    assert len(seen[0]) == len(seen[1]) == len(data) // 2


def test_cli_relaunches_under_torchrun(project):
    (project / "params.yaml").write_text(Params().model_dump_json())  # JSON is YAML
    r = run_cli(
        [
            "train",
            *TINY_CLI,
            "--set",
            "train.steps=2",
            "--set",
            "train.nproc_per_node=2",
        ],
        cwd=project,
        env={"OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "launching 2 processes" in r.stderr
    assert torch.load(project / "models/checkpoint.pt", weights_only=True)["step"] == 2
