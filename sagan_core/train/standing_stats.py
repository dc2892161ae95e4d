"""The EMA generator's own BatchNorm statistics ("standing statistics", BigGAN-PyTorch's
`accumulate_standing_stats`): the EMA averages G's weights, not its running statistics, so these are
recomputed before the EMA generator is sampled, evaluated or saved. BENCHMARKS.md ("EMA generator
statistics") measures the gain.
"""

from __future__ import annotations

import torch
from torch import nn

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@torch.no_grad()
def accumulate(g: nn.Module, batches: int, batch_size: int, seed: int, device: torch.device) -> None:
    """Recompute `g`'s BatchNorm statistics as the plain mean over `batches` batches of its own
    outputs; leaves `g` in eval mode. Only the BatchNorms train (elsewhere train mode would move the
    spectral-norm vectors); the noise has its own seed, so training's RNG and resume are untouched."""
    bns = [m for m in g.modules() if isinstance(m, BATCHNORMS)]
    if batches <= 0 or not bns:
        return
    spec = g.spec
    noise = torch.Generator().manual_seed(seed)  # CPU noise: the same statistics on every device
    momenta = [bn.momentum for bn in bns]
    g.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average
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
