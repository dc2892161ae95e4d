"""The fast Inception path of in-training scoring (channels_last + BatchNorm folded into the
convolutions, fp32) gives the plain fp32 NCHW path's features to relative rounding error, on the
stand-in weights (features of order 1e1-1e3: judged relative to their scale)."""

from __future__ import annotations

import pytest
import torch

from sagan_core.evaluate import inception as inc

pytestmark = pytest.mark.unit


def test_fast_path_features_equal_the_plain_path(standin_torch_home):
    weights = next(standin_torch_home.rglob("*.pth"))
    cpu = torch.device("cpu")
    plain = inc.load_net(weights, 2048, True, cpu)
    fast = inc.load_net(weights, 2048, True, cpu, fast=True)
    assert not plain.channels_last and fast.channels_last
    assert inc.fold_batchnorm(fast.net) == 0  # all folded already: no BatchNorm left
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    u8 = (torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    with inc.exact_fp32():
        (f0, l0), (f1, l1) = inc.run_batch(plain, u8, cpu), inc.run_batch(fast, u8, cpu)
    assert f0.abs().max() > 1  # a meaningful scale, not all zeros
    assert ((f1 - f0).abs().max() / f0.abs().max()).item() <= 1e-5
    assert ((l1 - l0).abs().max() / l0.abs().max()).item() <= 1e-5


@pytest.mark.integration
def test_cpu_chunks_give_the_same_features_as_one_batch(standin_torch_home, monkeypatch):
    """On CPU Inception runs inception.CPU_CHUNK images at a time (cheaper there); each image's
    features must not depend on that: bit-identical to the whole batch at once, both paths."""
    weights = next(standin_torch_home.rglob("*.pth"))
    cpu = torch.device("cpu")
    u8 = (torch.rand(7, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 255).to(torch.uint8)
    for fast in (False, True):
        net = inc.load_net(weights, 2048, True, cpu, fast=fast)
        monkeypatch.setattr(inc, "CPU_CHUNK", 7)
        whole, whole_logits = inc.run_batch(net, u8, cpu)
        monkeypatch.setattr(inc, "CPU_CHUNK", 3)  # 3 + 3 + 1
        chunked, chunked_logits = inc.run_batch(net, u8, cpu)
        assert chunked.shape == whole.shape == (7, 2048)
        assert torch.equal(chunked, whole)
        # the logits' matmul blocks by batch: equal to rounding only
        assert ((chunked_logits - whole_logits).abs().max() / whole_logits.abs().max()).item() <= 1e-6
