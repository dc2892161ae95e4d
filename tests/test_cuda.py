"""CUDA paths: run on a machine with a GPU (`pytest tests/test_cuda.py`); CPU-only machines skip them.

The same code paths (bf16 autocast, channels_last, torch.compile, DDP) also run on CPU in
test_train.py / test_ddp.py; these tests check what only a GPU can show.
"""

from __future__ import annotations

import pytest
import torch
from helpers import project_params, run_two_rank_worker
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from sagan_core.model.checkpoint import load_generator
from sagan_core.train.trainer import Trainer, train

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_spectral_norm_is_exact_under_cuda_bf16_autocast():
    torch.manual_seed(0)
    lin = spectral_norm(nn.Linear(256, 256)).cuda()
    x = torch.randn(8, 256, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(50):
            lin(x)
        w = lin.weight
    assert lin.parametrizations.weight[0]._u.dtype == torch.float32
    top = torch.linalg.matrix_norm(w.double(), ord=2).item()
    assert abs(top - 1) < 2e-3, top


def test_bf16_channels_last_training_on_cuda(project):
    params = project_params(project, train__steps=4, model__g_ch=8, model__d_ch=8)
    t = Trainer(params, progress=False)
    assert t.device.type == "cuda" and t.plan.bf16 and t.plan.channels_last  # the CUDA defaults
    summary = t.fit()
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["metrics"].values())
    g_cpu, _ = load_generator(project / "models/checkpoint.pt", device="cpu")
    g_gpu, _ = load_generator(project / "models/checkpoint.pt", device="cuda")
    z, y = torch.randn(4, 16), torch.arange(4)
    with torch.no_grad():
        torch.testing.assert_close(g_gpu(z.cuda(), y.cuda()).cpu(), g_cpu(z, y), atol=2e-3, rtol=0)


def test_torch_compile_with_inductor_on_cuda(project):
    params = project_params(project, train__steps=6, train__compile=True, model__g_ch=8, model__d_ch=8)
    summary = train(params, progress=False)
    assert summary["step"] == 6
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["metrics"].values())


@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["gloo", "nccl"])
def test_ddp_two_ranks_on_cuda(project, backend):
    if backend == "nccl" and torch.cuda.device_count() < 2:
        pytest.skip("NCCL needs one GPU per rank; this machine has one")
    env = {"SAGAN_DIST_BACKEND": backend}
    if backend == "gloo":
        env["SAGAN_TEST_DEVICE"] = "cuda:0"  # both ranks share the one GPU
    r0, r1 = run_two_rank_worker(project, env)  # asserts identical weights on both ranks
    assert r0["world"] == r1["world"] == 2
