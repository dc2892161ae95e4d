"""Precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020) on Inception
features, k = 5, as the reference `prdc` package (tests/test_prdc.py); float64 distances in blocks
of rows, so memory stays bounded at any N (50,000^2 would be 20 GB).
"""

from __future__ import annotations

import numpy as np
import torch

K = 5
BLOCK_ELEMENTS = 1 << 24  # 16M float64 distances (128 MB) per block


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_(min=0).sqrt_()


def _blocks(n_rows: int, n_cols: int, block_elements: int):
    step = max(1, block_elements // max(n_cols, 1))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


def kth_neighbour_radii(x: torch.Tensor, k: int = K, block_elements: int = BLOCK_ELEMENTS) -> torch.Tensor:
    out = torch.empty(len(x), dtype=torch.float64, device=x.device)
    for rows in _blocks(len(x), len(x), block_elements):
        out[rows] = _distances(x[rows], x).kthvalue(k + 1, dim=1).values
    return out


def prdc(
    real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, k: int = K,
    block_elements: int = BLOCK_ELEMENTS, device: torch.device | str = "cpu",
) -> dict[str, float]:
    real, fake = (torch.as_tensor(np.asarray(a), dtype=torch.float64, device=device) for a in (real, fake))
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall/density/coverage need more than k={k} real and fake samples")
    r_radii = kth_neighbour_radii(real, k, block_elements)
    f_radii = kth_neighbour_radii(fake, k, block_elements)
    dev = real.device
    in_real_balls = torch.zeros(len(fake), dtype=torch.int64, device=dev)  # per fake: real balls holding it
    real_in_fake = torch.zeros(len(real), dtype=torch.bool, device=dev)  # per real: inside some fake ball
    nearest_fake = torch.empty(len(real), dtype=torch.float64, device=dev)
    for rows in _blocks(len(real), len(fake), block_elements):
        d = _distances(real[rows], fake)  # block of real rows x all fakes
        in_real_balls += (d < r_radii[rows, None]).sum(0)
        real_in_fake[rows] = (d < f_radii[None, :]).any(1)
        nearest_fake[rows] = d.min(1).values
    return {
        "precision": (in_real_balls > 0).double().mean().item(),
        "recall": real_in_fake.double().mean().item(),
        "density": in_real_balls.double().mean().item() / k,
        "coverage": (nearest_fake < r_radii).double().mean().item(),
    }
