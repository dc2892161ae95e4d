"""SAGAN's generator and discriminator (Zhang et al. 2018), the official code's ResNet layout.
Differences from the paper are parameters: widths, attention per resolution, cBN init."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from sagan_core.errors import ConfigError
from sagan_core.model.arch import BOTTOM, D_ARCH, G_ARCH, attention_slots, default_attention
from sagan_core.model.layers import DBlock, GBlock, SelfAttention, sn, sn_conv, sn_linear

if TYPE_CHECKING:
    from sagan_core.config import Params


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild the networks; stored in checkpoints as a plain dict."""

    resolution: int
    channels: int
    num_classes: int  # 0 = unconditional
    z_dim: int = 128
    g_ch: int = 32
    d_ch: int = 32
    g_attn: tuple[int, ...] = (16,)
    d_attn: tuple[int, ...] = (16,)
    sn_eps: float = 1e-6
    bn_eps: float = 1e-5
    cbn_init: str = "orthogonal"

    def to_dict(self) -> dict:
        return asdict(self) | {"g_attn": list(self.g_attn), "d_attn": list(self.d_attn)}

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        return cls(**{**d, "g_attn": tuple(d["g_attn"]), "d_attn": tuple(d["d_attn"])})


def model_spec(params: Params, num_classes: int) -> ModelSpec:
    m, d = params.model, params.data
    conditional = {"auto": num_classes > 1, "yes": True, "no": False}[m.conditional]
    if conditional and num_classes < 2:
        raise ConfigError(
            "model.conditional: 'yes' needs a labelled dataset (class subfolders), this one has none"
        )
    return ModelSpec(
        resolution=d.resolution,
        channels=d.channels,
        num_classes=num_classes if conditional else 0,
        g_attn=tuple(m.g_attn if m.g_attn is not None else default_attention(d.resolution)),
        d_attn=tuple(m.d_attn if m.d_attn is not None else default_attention(d.resolution)),
        **{k: getattr(m, k) for k in ("z_dim", "g_ch", "d_ch", "sn_eps", "bn_eps", "cbn_init")},
    )


class Generator(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        ins, outs = G_ARCH[spec.resolution]
        ch, nc = spec.g_ch, spec.num_classes
        self.linear = sn_linear(spec.z_dim, ins[0] * ch * BOTTOM**2, spec.sn_eps)
        self.blocks = nn.ModuleList()
        attn = attention_slots("g_attn", spec.resolution, spec.g_attn, ConfigError)
        for i, (cin, cout) in enumerate(zip(ins, outs)):
            self.blocks.append(GBlock(cin * ch, cout * ch, nc, spec.sn_eps, spec.bn_eps, spec.cbn_init))
            if i in attn:
                self.blocks.append(SelfAttention(cout * ch, spec.sn_eps))
        self.out_bn = nn.BatchNorm2d(outs[-1] * ch, eps=spec.bn_eps)
        self.out_conv = sn_conv(outs[-1] * ch, spec.channels, 3, spec.sn_eps)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.linear(z).view(z.shape[0], -1, BOTTOM, BOTTOM)
        for block in self.blocks:
            h = block(h) if isinstance(block, SelfAttention) else block(h, y)
        return torch.tanh(self.out_conv(torch.relu(self.out_bn(h))))


class Discriminator(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        outs, down = D_ARCH[spec.resolution]
        ch = spec.d_ch
        self.blocks = nn.Sequential()
        cin, attn = spec.channels, attention_slots("d_attn", spec.resolution, spec.d_attn, ConfigError)
        for i, (cout, ds) in enumerate(zip(outs, down)):
            self.blocks.append(DBlock(cin, cout * ch, ds, optimized=i == 0, sn_eps=spec.sn_eps))
            if i in attn:
                self.blocks.append(SelfAttention(cout * ch, spec.sn_eps))
            cin = cout * ch
        self.linear = sn_linear(cin, 1, spec.sn_eps)
        # projection discriminator (Miyato & Koyama 2018)
        self.embed = sn(nn.Embedding(spec.num_classes, cin), spec.sn_eps) if spec.num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling
        out = self.linear(h).squeeze(1)
        if self.embed is not None:
            out = out + (self.embed(y) * h).sum(dim=1)
        return out


def attention_blocks(model: nn.Module) -> list[SelfAttention]:
    return [m for m in model.modules() if isinstance(m, SelfAttention)]


def build_models(spec: ModelSpec) -> tuple[Generator, Discriminator]:
    return Generator(spec), Discriminator(spec)
