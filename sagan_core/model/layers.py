"""SAGAN's blocks (after BigGAN-PyTorch's layers.py and the official SAGAN code)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from sagan_core.errors import ConfigError


class SpectralNorm(nn.Module):
    """W / sigma(W), one power iteration per training forward (Miyato et al. 2018), always fp32.

    Not torch's `spectral_norm`: under autocast its `torch.mv` runs in bf16 while `torch.vdot` does
    not. Same buffers (`_u`, `_v`: checkpoint keys) and arithmetic as torch's (15 iterations at
    init; u, v cloned: saved for backward, updated in place by the next forward)."""

    def __init__(self, weight: torch.Tensor, eps: float):
        super().__init__()
        self.eps = eps
        if weight.ndim > 1:
            with torch.no_grad():
                w = weight.flatten(1)
                u = F.normalize(w.new_empty(w.shape[0]).normal_(0, 1), dim=0, eps=eps)
                v = F.normalize(w.new_empty(w.shape[1]).normal_(0, 1), dim=0, eps=eps)
                for _ in range(15):
                    u = F.normalize(torch.mv(w, v), dim=0, eps=eps, out=u)
                    v = F.normalize(torch.mv(w.t(), u), dim=0, eps=eps, out=v)
            self.register_buffer("_u", u)
            self.register_buffer("_v", v)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.dtype == torch.float32 and not torch.is_autocast_enabled(weight.device.type):
            return self._normalized(weight)
        with torch.autocast(weight.device.type, enabled=False):
            return self._normalized(weight.float())

    def _normalized(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        w = weight.flatten(1)
        if self.training:
            with torch.no_grad():
                torch.mv(w, self._v, out=self._u)
                self._u.div_(torch.linalg.vector_norm(self._u, dim=0, keepdim=True).clamp_min_(self.eps))
                torch.mv(w.t(), self._u, out=self._v)
                self._v.div_(torch.linalg.vector_norm(self._v, dim=0, keepdim=True).clamp_min_(self.eps))
        sigma = torch.vdot(self._u.clone(), torch.mv(w, self._v.clone()))
        return weight / sigma


def sn(module: nn.Module, eps: float = 1e-6) -> nn.Module:
    """Spectral norm on `module.weight`, after the official SAGAN code's Glorot init."""
    nn.init.xavier_uniform_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    parametrize.register_parametrization(module, "weight", SpectralNorm(module.weight, eps))
    return module


def sn_conv(cin: int, cout: int, k: int = 3, eps: float = 1e-6, bias: bool = True) -> nn.Module:
    return sn(nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias), eps)


def sn_linear(cin: int, cout: int, eps: float = 1e-6, bias: bool = True) -> nn.Module:
    return sn(nn.Linear(cin, cout, bias=bias), eps)


class ConditionalBatchNorm(nn.Module):
    """BatchNorm with per-class gain and bias (affine BatchNorm when num_classes == 0).

    "orthogonal" as BigGAN-PyTorch: classes apart from step 0. "official" (TF code: gain 1, bias 0)
    reached 67% class accuracy against 97% after 2,000 demo steps (BENCHMARKS.md)."""

    def __init__(self, ch: int, num_classes: int, eps: float = 1e-5, init: str = "orthogonal"):
        super().__init__()
        if init not in ("orthogonal", "official"):
            raise ConfigError(f"model.cbn_init: expected orthogonal or official, got {init!r}")
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(ch, eps=eps, affine=num_classes == 0)
        if num_classes:
            self.gain = nn.Embedding(num_classes, ch)
            self.bias = nn.Embedding(num_classes, ch)
            with torch.no_grad():
                if init == "orthogonal":
                    nn.init.orthogonal_(self.gain.weight).add_(1.0)
                    nn.init.orthogonal_(self.bias.weight)
                else:
                    nn.init.ones_(self.gain.weight)
                    nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        out = self.bn(x)
        if not self.num_classes:
            return out
        # one fused multiply-add instead of a multiply and an add over the whole feature map
        return torch.addcmul(self.bias(y)[:, :, None, None], out, self.gain(y)[:, :, None, None])


class SelfAttention(nn.Module):
    """SAGAN self-attention (official sn_non_local_block_sim): keys and values 2x2 max-pooled,
    y = x + gamma * o with gamma = 0 at init."""

    def __init__(self, ch: int, eps: float = 1e-6):
        super().__init__()
        if ch < 8 or ch % 8:
            raise ConfigError(
                f"model: a self-attention block needs a multiple of 8 channels (C/8 keys), got {ch}; "
                "widen model.g_ch/model.d_ch or move model.g_attn/model.d_attn"
            )
        self.theta = sn_conv(ch, ch // 8, 1, eps, bias=False)
        self.phi = sn_conv(ch, ch // 8, 1, eps, bias=False)
        self.g = sn_conv(ch, ch // 2, 1, eps, bias=False)
        self.o = sn_conv(ch // 2, ch, 1, eps, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))
        self.keep_attention = False  # set by visualisation code to read back the last map
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # theta, phi, g: one conv with their (separately normalised) weights stacked, one max-pool
        w_qkv = torch.cat([self.theta.weight, self.phi.weight, self.g.weight])
        theta, pg = F.conv2d(x, w_qkv).split([c // 8, c // 8 + c // 2], dim=1)
        phi, g = F.max_pool2d(pg, 2).split([c // 8, c // 2], dim=1)
        q, k, v = (t.permute(0, 2, 3, 1).flatten(1, 2) for t in (theta, phi, g))
        # Not torch's fused attention: no CPU kernel for q/k and v of different widths (measured slower)
        attn = torch.softmax(q @ k.transpose(1, 2), dim=-1)  # B, N, N/4: each query over keys
        if self.keep_attention:
            self.last_attention = attn.detach().float().view(b, h, w, h // 2, w // 2)
        o = attn @ v
        o = o.transpose(1, 2).unflatten(2, (h, w))  # B, C/2, H, W (channels_last strides)
        return x + self.gamma * self.o(o)


class GBlock(nn.Module):
    """Generator up-block: cBN-ReLU-up-conv3x3-cBN-ReLU-conv3x3 + conv1x1-up shortcut. The 1x1 conv
    runs before the nearest upsampling: they commute exactly, at 4x fewer FLOPs."""

    def __init__(self, cin: int, cout: int, num_classes: int, sn_eps=1e-6, bn_eps=1e-5,
                 cbn_init="orthogonal"):
        super().__init__()
        self.bn1 = ConditionalBatchNorm(cin, num_classes, bn_eps, cbn_init)
        self.conv1 = sn_conv(cin, cout, 3, sn_eps)
        self.bn2 = ConditionalBatchNorm(cout, num_classes, bn_eps, cbn_init)
        self.conv2 = sn_conv(cout, cout, 3, sn_eps)
        self.shortcut = sn_conv(cin, cout, 1, sn_eps)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
        return h + F.interpolate(self.shortcut(x), scale_factor=2, mode="nearest")


class DBlock(nn.Module):
    """Discriminator block: (ReLU)-conv3x3-ReLU-conv3x3-(avgpool) + conv1x1 shortcut; `optimized` is
    the first block (no leading ReLU, pool before the shortcut conv), as in Miyato et al."""

    def __init__(self, cin: int, cout: int, downsample: bool, optimized: bool = False, sn_eps: float = 1e-6):
        super().__init__()
        self.downsample, self.optimized = downsample, optimized
        self.conv1 = sn_conv(cin, cout, 3, sn_eps)
        self.conv2 = sn_conv(cout, cout, 3, sn_eps)
        self.learnable_sc = cin != cout or downsample
        if self.learnable_sc:
            self.shortcut = sn_conv(cin, cout, 1, sn_eps)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2) if self.downsample else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x if self.optimized else F.relu(x)
        h = self._pool(self.conv2(F.relu(self.conv1(h))))
        if not self.learnable_sc:
            return h + x
        sc = self.shortcut(self._pool(x)) if self.optimized else self._pool(self.shortcut(x))
        return h + sc
