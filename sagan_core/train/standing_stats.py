"""The EMA generator's own BatchNorm statistics ("standing statistics", BigGAN-PyTorch's
`accumulate_standing_stats`).

The EMA generator averages G's weights but not its BatchNorm running statistics: those were
accumulated by the raw G, whose activations differ from the averaged weights' ones. So before the
EMA generator is sampled, evaluated or saved, its statistics are recomputed: reset, then `batches`
forward passes of fresh z/labels with only the BatchNorm layers in train mode (no_grad, cumulative
average: momentum None), so every batch weighs the same. Everything else stays in eval mode: in train
mode the spectral-norm parametrizations would run a power iteration and move their u/v vectors.

The noise comes from its own generator, seeded from (seed, step): the training RNG is untouched, so
resume stays bit-exact, and the same weights always get the same statistics.
Measured (BENCHMARKS.md, "EMA generator statistics"): eval-mode outputs move far closer to the
generator's own batch statistics than with G's copied running statistics.
"""

from __future__ import annotations

import torch
from torch import nn


def batchnorms(g: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in g.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def accumulate(g: nn.Module, batches: int, batch_size: int, seed: int, device: torch.device) -> None:
    """Recompute `g`'s BatchNorm running statistics from `batches` batches of its own outputs; leaves
    `g` in eval mode. `g` has a `spec` (z_dim, num_classes), as sagan_core.model.Generator does."""
    bns = batchnorms(g)
    if batches <= 0 or not bns:
        return
    spec = g.spec
    noise = torch.Generator().manual_seed(seed)  # CPU noise: the same statistics on every device
    momenta = [bn.momentum for bn in bns]
    g.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: the plain mean over the batches
        bn.train()
    try:
        for _ in range(batches):
            z = torch.randn(batch_size, spec.z_dim, generator=noise).to(device)
            y = None
            if spec.num_classes:
                y = torch.randint(spec.num_classes, (batch_size,), generator=noise).to(device)
            g(z, y)
    finally:
        for bn, m in zip(bns, momenta):
            bn.momentum = m
            bn.eval()


def batch_stat_gap(g: nn.Module, n: int, seed: int, device: torch.device) -> float:
    """Mean |eval-mode output - output with the batch's own statistics| on the [-1, 1] scale, for the
    same z/labels: how far the running statistics are from what the weights actually produce."""
    spec = g.spec
    noise = torch.Generator().manual_seed(seed)
    z = torch.randn(n, spec.z_dim, generator=noise).to(device)
    y = torch.randint(spec.num_classes, (n,), generator=noise).to(device) if spec.num_classes else None
    bns = batchnorms(g)
    saved = [(bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()) for bn in bns]
    with torch.no_grad():
        g.eval()
        eval_out = g(z, y)
        for bn in bns:  # batch statistics, without touching the running ones
            bn.train()
            bn.track_running_stats = False
        try:
            batch_out = g(z, y)
        finally:
            for bn, (mean, var, count) in zip(bns, saved):
                bn.track_running_stats = True
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var)
                bn.num_batches_tracked.copy_(count)
                bn.eval()
    return (eval_out - batch_out).abs().mean().item()
