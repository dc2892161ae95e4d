"""The training step as it was before issue 13, kept as a reference for train_throughput.py.

`make_legacy(trainer)` turns a Trainer built with precision fp32 (or bf16) and channels_last "no"
into the old step: the old forwards of spectral norm (torch's parametrization inside an autocast
context and a cast), conditional BN (multiply, then add), self-attention (three 1x1 convs, two
pools, explicit bmm/softmax/bmm) and the generator block (nearest upsample, then the 1x1 shortcut),
and the old optimizer (torch's default Adam: a Python loop over parameters on CPU). The weights are
the same modules, so both steps do the same math; only the kernels differ.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from sagan_core.model import layers


def _sn_forward(self, weight):
    with torch.autocast(weight.device.type, enabled=False):
        return self._normalized(weight.float())


def _cbn_forward(self, x, y):
    out = self.bn(x)
    if not self.num_classes:
        return out
    return out * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


def _attention_forward(self, x):
    b, c, h, w = x.shape
    theta = self.theta(x).flatten(2)
    phi = F.max_pool2d(self.phi(x), 2).flatten(2)
    g = F.max_pool2d(self.g(x), 2).flatten(2)
    attn = torch.softmax(theta.transpose(1, 2) @ phi, dim=-1)
    o = (g @ attn.transpose(1, 2)).view(b, c // 2, h, w)
    return x + self.gamma * self.o(o)


def _gblock_forward(self, x, y):
    h = F.interpolate(F.relu(self.bn1(x, y)), scale_factor=2, mode="nearest")
    h = self.conv2(F.relu(self.bn2(self.conv1(h), y)))
    return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


_OLD = {
    layers.SpectralNorm: _sn_forward,
    layers.ConditionalBatchNorm: _cbn_forward,
    layers.SelfAttention: _attention_forward,
    layers.GBlock: _gblock_forward,
}


def legacy_modules(*nets: torch.nn.Module) -> None:
    for net in nets:
        for m in net.modules():
            if type(m) in _OLD:
                m.forward = types.MethodType(_OLD[type(m)], m)


def make_legacy(t) -> None:
    """Old forwards on t's G, EMA G and D; torch's default (for-loop) Adam, as the old trainer built it."""
    if t.plan.channels_last:
        raise ValueError(
            "the step before issue 13 ran NCHW on CPU: build the trainer with channels_last 'no'"
        )
    legacy_modules(t.state.G, t.state.D, t.state.G_ema.module)
    betas = (float(t.cfg.beta1), float(t.cfg.beta2))
    t.state.opt_g = torch.optim.Adam(t.state.G.parameters(), lr=t.cfg.lr_g, betas=betas)
    t.state.opt_d = torch.optim.Adam(t.state.D.parameters(), lr=t.cfg.lr_d, betas=betas)
