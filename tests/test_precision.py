"""The faster training step computes what the old one did: layer rewrites, precision choices."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import project_params
from torch.nn.utils.parametrizations import spectral_norm

from sagan_core.config import TrainConfig
from sagan_core.model.checkpoint import load_generator
from sagan_core.model.layers import GBlock, SelfAttention, sn_conv
from sagan_core.train import precision
from sagan_core.train.trainer import Trainer

pytestmark = pytest.mark.unit


def test_gblock_shortcut_before_upsample_equals_upsample_first():
    """The 1x1 shortcut conv now runs before the nearest upsampling; the official order is the reverse."""
    torch.manual_seed(0)
    blk = GBlock(16, 8, num_classes=10).eval()  # eval: no power iteration between the two evaluations
    x, y = torch.randn(4, 16, 8, 8), torch.randint(10, (4,))
    up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    with torch.no_grad():
        h = blk.conv2(F.relu(blk.bn2(blk.conv1(up(F.relu(blk.bn1(x, y)))), y)))
        upsample_first = h + blk.shortcut(up(x))
        ours = blk(x, y)
    assert ours.shape == (4, 8, 16, 16)
    torch.testing.assert_close(ours, upsample_first, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [False, True])
def test_attention_equals_the_papers_formula(channels_last):
    """One stacked qkv conv, (B, N, C) views = separate convs, softmax(theta^T phi), g attn^T."""
    torch.manual_seed(0)
    att = SelfAttention(32).eval()
    with torch.no_grad():
        att.gamma.fill_(0.8)
    x = torch.randn(3, 32, 8, 8)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        theta = F.conv2d(x, att.theta.weight).flatten(2)
        phi = F.max_pool2d(F.conv2d(x, att.phi.weight), 2).flatten(2)
        g = F.max_pool2d(F.conv2d(x, att.g.weight), 2).flatten(2)
        attn = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)
        expected = x + 0.8 * F.conv2d((g @ attn.transpose(1, 2)).view(3, 16, 8, 8), att.o.weight)
        att.keep_attention = True  # also keep the map, for figures
        ours = att(x)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(att.last_attention.flatten(3), attn.view(3, 8, 8, 16), rtol=1e-5, atol=1e-6)


def test_spectral_norm_matches_torch_over_training_steps():
    """Our leaner parametrization follows torch's spectral_norm: same u, v, sigma, weights, gradients."""
    torch.manual_seed(0)
    ours = sn_conv(6, 12, 3)
    ref = torch.nn.Conv2d(6, 12, 3, padding=1)
    ref.weight.data.copy_(ours.parametrizations.weight.original)
    ref.bias.data.copy_(ours.bias)
    ref = spectral_norm(ref, eps=1e-6)
    ref.parametrizations.weight[0]._u.copy_(ours.parametrizations.weight[0]._u)
    ref.parametrizations.weight[0]._v.copy_(ours.parametrizations.weight[0]._v)
    x = torch.randn(2, 6, 5, 5)
    for _ in range(3):  # training forwards run one power iteration each
        out_ours, out_ref = ours(x), ref(x)
        torch.testing.assert_close(out_ours, out_ref, rtol=1e-6, atol=1e-6)
        out_ours.square().sum().backward()
        out_ref.square().sum().backward()
    for a, b in [("_u", "_u"), ("_v", "_v")]:
        torch.testing.assert_close(
            getattr(ours.parametrizations.weight[0], a), getattr(ref.parametrizations.weight[0], b)
        )
    g_ours, g_ref = ours.parametrizations.weight.original.grad, ref.parametrizations.weight.original.grad
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-5, atol=1e-6)


def _probe(monkeypatch, amx: bool, avx512_bf16: bool) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"amx_tile": amx, "avx512_bf16": avx512_bf16})


def test_auto_precision_is_fp32_on_a_cpu_without_bf16_units(monkeypatch):
    cpu, cuda, auto = torch.device("cpu"), torch.device("cuda"), TrainConfig()
    _probe(monkeypatch, amx=False, avx512_bf16=False)
    assert not precision.cpu_has_bf16_units()
    assert not precision.plan(auto, cpu).bf16
    assert precision.plan(auto, cuda).bf16  # CUDA: bf16 whatever the host CPU
    assert precision.plan(TrainConfig(precision="bf16"), cpu).bf16  # an explicit choice is obeyed
    for amx, avx in [(True, False), (False, True)]:
        _probe(monkeypatch, amx=amx, avx512_bf16=avx)
        assert precision.plan(auto, cpu).bf16
        assert not precision.plan(TrainConfig(precision="fp32"), cpu).bf16


def test_a_cpu_without_the_probes_counts_as_without_bf16_units(monkeypatch):
    monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
    assert not precision.cpu_has_bf16_units()


def test_channels_last_auto_and_override():
    cpu = torch.device("cpu")
    assert precision.plan(TrainConfig(), cpu).channels_last
    assert not precision.plan(TrainConfig(channels_last="no"), cpu).channels_last


def test_auto_bf16_channels_last_cpu_training_loads_in_fp32(project, monkeypatch):
    """`precision: auto` on a CPU with bf16 units (probe mocked): trains in bf16 autocast and
    channels_last, and the checkpoint is an fp32 generator that samples without autocast."""
    _probe(monkeypatch, amx=True, avx512_bf16=True)
    params = project_params(project, train__steps=2, model__g_ch=8, model__d_ch=8)
    t = Trainer(params, progress=False)
    assert (
        t.plan.bf16
        and t.plan.channels_last
        and t.state.G.blocks[0].conv1.parametrizations.weight.original.is_contiguous(
            memory_format=torch.channels_last
        )
    )
    assert t.state.opt_g.param_groups[0]["fused"]
    t.fit()
    g, meta = load_generator(project / "models/checkpoint.pt", use_ema=True, device=torch.device("cpu"))
    assert meta["step"] == 2
    assert all(p.dtype == torch.float32 for p in g.parameters())
    with torch.no_grad():
        x = g(torch.randn(4, g.spec.z_dim), torch.arange(4) % g.spec.num_classes)
    assert x.dtype == torch.float32 and torch.isfinite(x).all() and x.shape[-1] == params.data.resolution


def test_inception_pass_leaves_training_autocast():
    """FID/IS/KID stay fp32 even when evaluated from inside a bf16 training context."""
    from sagan_core.evaluate.inception import exact_fp32

    with torch.autocast("cpu", dtype=torch.bfloat16):
        with exact_fp32():
            assert not torch.is_autocast_enabled("cpu")
            assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.float32
        assert torch.is_autocast_enabled("cpu")
