"""Pictures people look at: sample grids and the attention-map figure (the paper's Figure 1 idea)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchvision.utils import make_grid, save_image  # noqa: E402

from sagan_core.atomic import write_atomic  # noqa: E402
from sagan_core.model.networks import Generator, attention_blocks  # noqa: E402


def fixed_inputs(z_dim: int, num_classes: int, per_class: int = 10, seed: int = 1234):
    """Fixed noise for progress grids: one row per class when conditional, else 8 x 8."""
    g = torch.Generator().manual_seed(seed)
    if num_classes:
        rows = min(num_classes, 20)
        y = torch.arange(rows).repeat_interleave(per_class)
        return torch.randn(len(y), z_dim, generator=g), y, per_class
    return torch.randn(64, z_dim, generator=g), None, 8


@torch.no_grad()
def save_grid(images: torch.Tensor, path: str | Path, nrow: int) -> None:
    """images in [-1, 1] -> one PNG grid, written atomically (a full disk keeps the previous one)."""
    grid = make_grid(images.float().clamp(-1, 1), nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1)
    png = io.BytesIO()
    save_image(grid, png, format="PNG")
    write_atomic(path, lambda f: f.write(png.getbuffer()))


@torch.no_grad()
def attention_figure(
    g: Generator, z: torch.Tensor, y: torch.Tensor | None, path: str | Path, n_images: int = 3
):
    """For a few query pixels of each sample, where the generator's attention layer looks.

    Each row: the sample with coloured query points, then one heat map per query (the softmax over
    key locations, upsampled to image size and laid over the sample).
    """
    blocks = attention_blocks(g)
    if not blocks:
        return None
    attn = blocks[-1]
    pick = torch.linspace(0, len(z) - 1, n_images, device=z.device).long()  # rows from different classes
    z, y = z[pick], None if y is None else y[pick]
    attn.keep_attention = True
    try:
        images = g(z, y).float().cpu()
        maps = attn.last_attention[:n_images].cpu()  # B, h, w, h/2, w/2
    finally:
        attn.keep_attention, attn.last_attention = False, None
    b, h, w = maps.shape[:3]
    queries = [(h // 4, w // 4), (h // 4, 3 * w // 4), (h // 2, w // 2), (3 * h // 4, w // 2)]
    colours = ["red", "lime", "cyan", "yellow"]
    res = images.shape[-1]
    fig, axes = plt.subplots(b, 1 + len(queries), figsize=(2 * (1 + len(queries)), 2 * b), squeeze=False)
    for i in range(b):
        img = ((images[i] + 1) / 2).clamp(0, 1).permute(1, 2, 0).squeeze(-1).numpy()
        cmap = "gray" if img.ndim == 2 else None
        axes[i, 0].imshow(img, cmap=cmap, vmin=0, vmax=1)
        if y is not None:
            axes[i, 0].set_title(f"class {int(y[i])}", fontsize=8)
        for (qy, qx), c in zip(queries, colours):
            axes[i, 0].scatter([(qx + 0.5) * res / w], [(qy + 0.5) * res / h], s=30, c=c, edgecolors="black")
        for j, ((qy, qx), c) in enumerate(zip(queries, colours), start=1):
            heat = F.interpolate(maps[i, qy, qx][None, None], size=(res, res), mode="bilinear")[0, 0]
            axes[i, j].imshow(img, cmap=cmap, vmin=0, vmax=1)
            axes[i, j].imshow(heat.numpy(), cmap="inferno", alpha=0.6)
            axes[i, j].scatter([(qx + 0.5) * res / w], [(qy + 0.5) * res / h], s=30, c=c, edgecolors="black")
    for ax in axes.flat:
        ax.set_axis_off()
    gammas = ", ".join(f"{blk.gamma.item():.3f}" for blk in blocks)
    fig.suptitle(f"Generator self-attention at {h}x{w} (gamma: {gammas})", fontsize=9)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=80)
    plt.close(fig)
    write_atomic(path, lambda f: f.write(png.getbuffer()))  # as save_grid: a full disk keeps the old one
    return path
