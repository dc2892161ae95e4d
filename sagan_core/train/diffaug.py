"""DiffAugment (Zhao et al. 2020) from the paper's definitions: color, translation (1/8), cutout (1/2),
the same on real and fake, per-image draws from TrainState.augment (so resume is bit-exact).
"""

from __future__ import annotations

import torch


def _uniform(x: torch.Tensor, gen: torch.Generator, low: float, high: float) -> torch.Tensor:
    u = torch.rand(x.shape[0], 1, 1, 1, generator=gen, device=x.device, dtype=torch.float32)
    return (u * (high - low) + low).to(x.dtype)


def color(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    x = x + _uniform(x, gen, -0.5, 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * _uniform(x, gen, 0.0, 2.0) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, gen, 0.5, 1.5) + mean  # contrast


def _shifted_index(size: int, shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(clamped source index, in range) for out[i] = in[i + shift]: N x size."""
    idx = torch.arange(size, device=shift.device)[None, :] + shift[:, None]
    valid = (idx >= 0) & (idx < size)
    return idx.clamp(0, size - 1), valid


def translation(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.125) -> torch.Tensor:
    n, c, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sh, sh + 1, (n,), generator=gen, device=x.device)
    dx = torch.randint(-sw, sw + 1, (n,), generator=gen, device=x.device)
    rows, row_ok = _shifted_index(h, dy)  # N x H
    cols, col_ok = _shifted_index(w, dx)  # N x W
    out = x.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    out = out.gather(3, cols[:, None, None, :].expand(n, c, h, w))
    keep = (row_ok[:, :, None] & col_ok[:, None, :])[:, None].to(x.dtype)  # zeros shifted in
    return out * keep


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    # centres in [0, size + (1 - cut % 2)), the square spans centre - cut // 2 ... + cut - 1
    cy = torch.randint(0, h + (1 - ch % 2), (n,), generator=gen, device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (n,), generator=gen, device=x.device)
    i = torch.arange(h, device=x.device)[None, :] - (cy - ch // 2)[:, None]  # N x H, in the square: 0..ch-1
    j = torch.arange(w, device=x.device)[None, :] - (cx - cw // 2)[:, None]
    inside = ((i >= 0) & (i < ch))[:, :, None] & ((j >= 0) & (j < cw))[:, None, :]
    return x * (~inside)[:, None].to(x.dtype)


_FUNCTIONS = {"color": color, "translation": translation, "cutout": cutout}


def augment(x: torch.Tensor, policy: str, gen: torch.Generator) -> torch.Tensor:
    """x with the operations of `policy` (train.diffaug as validated: "color,cutout") applied in
    order; each image its own draws. "" returns x itself."""
    for op in filter(None, policy.split(",")):
        x = _FUNCTIONS[op](x, gen)
    return x
