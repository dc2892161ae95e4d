"""Sample grids (a labelled row per class, on pages `page_path`; row names also in the PNG's
`sagan.rows` text chunk), the model card's preview and the attention figure (the paper's Figure 1).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402
from PIL.PngImagePlugin import PngInfo  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from sagan_core.atomic import write_atomic  # noqa: E402
from sagan_core.model.networks import Generator, attention_blocks  # noqa: E402

PER_CLASS = 10  # images per class row (fewer when there are many classes, never under MIN_PER_CLASS)
MIN_PER_CLASS = 4
GRID_IMAGES = 1000  # images per progress grid before rows get shorter: 100 classes x 10
PAGE_HEIGHT = 2560  # px: a page of rows stays readable without scrolling past several screens
PREVIEW_ROWS, PREVIEW_COLS = 3, 8  # the preview: a few rows (classes spread over all) for model cards
LABEL_CHARS = 16  # a longer class name is cut with "…" in a row label
PAD = 2  # make_grid's padding
ATTENTION_IMAGES = 3  # rows of the attention figure


def class_label(k: int, names: list[str] | None) -> str:
    return str(names[k]) if names and k < len(names) else f"class {k}"


def fixed_inputs(z_dim: int, num_classes: int, per_class: int = PER_CLASS, seed: int = 1234):
    """Fixed noise for progress grids: a row per class when conditional, else 8 x 8."""
    g = torch.Generator().manual_seed(seed)
    if num_classes:
        per_class = max(MIN_PER_CLASS, min(per_class, GRID_IMAGES // num_classes))
        y = torch.arange(num_classes).repeat_interleave(per_class)
        return torch.randn(len(y), z_dim, generator=g), y, per_class
    return torch.randn(64, z_dim, generator=g), None, 8


def page_path(path: str | Path, page: int) -> Path:
    path = Path(path)
    return path if page == 1 else path.with_name(f"{path.stem}_p{page}{path.suffix}")


@torch.no_grad()
def save_grid(images: torch.Tensor, path: str | Path, nrow: int, labels: list[str] | None = None) -> None:
    """images in [-1, 1] -> a PNG, `nrow` a row, `labels` in a left margin; written atomically."""
    grid = make_grid(images.float().clamp(-1, 1), nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1)
    pixels = grid.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)  # save_image's rounding: its PNG unlabelled
    page = Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())
    info = PngInfo()
    if labels:
        side = images.shape[-2]
        try:
            font = ImageFont.load_default(size=max(10, min(16, side // 2)))  # FreeType's scalable default
        except (ImportError, OSError, TypeError):  # a Pillow without FreeType: the small bitmap font
            font = ImageFont.load_default()
        texts = [t if len(t) <= LABEL_CHARS else t[: LABEL_CHARS - 1] + "…" for t in labels]
        width = max(int(ImageDraw.Draw(page).textlength(t, font=font)) for t in texts) + 8
        cells, page = page, Image.new("RGB", (width + page.width, page.height), "white")
        page.paste(cells, (width, 0))
        draw = ImageDraw.Draw(page)
        for i, text in enumerate(texts):
            middle = PAD + i * (side + PAD) + side // 2
            draw.text((width - 4, middle), text, fill="black", font=font, anchor="rm")
        info.add_text("sagan.rows", json.dumps(list(labels)))
    png = io.BytesIO()
    page.save(png, format="PNG", pnginfo=info)
    write_atomic(path, lambda f: f.write(png.getbuffer()))


def save_class_grids(
    images: torch.Tensor, y: torch.Tensor, per_class: int, path: str | Path, names: list[str] | None
) -> list[Path]:
    """A conditional progress grid as labelled pages; the pages written, page 1 first."""
    rows = len(images) // per_class
    per_page = max(10, PAGE_HEIGHT // (images.shape[-1] + PAD))
    pages = -(-rows // per_page)
    per_page = -(-rows // pages)  # pages of even length: 100 rows on 2 pages are 50 + 50, not 85 + 15
    written = []
    for p in range(pages):
        first, last = p * per_page, min(rows, (p + 1) * per_page)
        labels = [class_label(int(y[r * per_class]), names) for r in range(first, last)]
        out = page_path(path, p + 1)
        save_grid(images[first * per_class : last * per_class], out, per_class, labels)
        written.append(out)
    return written


@torch.no_grad()
def attention_figure(g: Generator, z: torch.Tensor, y: torch.Tensor | None, path: str | Path, names=None):
    """Per sample: where the last attention layer looks from a few query pixels (heat maps)."""
    blocks = attention_blocks(g)
    if not blocks:
        return None
    attn = blocks[-1]
    pick = torch.linspace(0, len(z) - 1, ATTENTION_IMAGES, device=z.device).long()  # different classes
    z, y = z[pick], None if y is None else y[pick]
    attn.keep_attention = True
    try:
        images = g(z, y).float().cpu()
        maps = attn.last_attention[:ATTENTION_IMAGES].cpu()  # B, h, w, h/2, w/2
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
            axes[i, 0].set_title(class_label(int(y[i]), names), fontsize=8)
        for j, ((qy, qx), c) in enumerate(zip(queries, colours), start=1):
            heat = F.interpolate(maps[i, qy, qx][None, None], size=(res, res), mode="bilinear")[0, 0]
            axes[i, j].imshow(img, cmap=cmap, vmin=0, vmax=1)
            axes[i, j].imshow(heat.numpy(), cmap="inferno", alpha=0.6)
            for ax in (axes[i, 0], axes[i, j]):  # the query pixel, on the sample and on its map
                ax.scatter([(qx + 0.5) * res / w], [(qy + 0.5) * res / h], s=30, c=c, edgecolors="black")
    for ax in axes.flat:
        ax.set_axis_off()
    gammas = ", ".join(f"{blk.gamma.item():.3f}" for blk in blocks)
    fig.suptitle(f"Generator self-attention at {h}x{w} (gamma: {gammas})", fontsize=9)
    fig.tight_layout()
    rows = [] if y is None else [class_label(int(k), names) for k in y]
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=80, metadata={"sagan.rows": json.dumps(rows)})
    plt.close(fig)
    write_atomic(path, lambda f: f.write(png.getbuffer()))  # as save_grid: a full disk keeps the old one
    return path


def save_preview(
    images: torch.Tensor, y: torch.Tensor | None, per_row: int, path: str | Path, names: list[str] | None
) -> Path:
    """A few rows of a progress grid (classes spread first to last), small, for model cards."""
    rows = len(images) // per_row
    picked = torch.linspace(0, rows - 1, min(rows, PREVIEW_ROWS)).round().long().unique().tolist()
    cols = min(per_row, PREVIEW_COLS)
    chosen = torch.cat([images[r * per_row : r * per_row + cols] for r in picked])
    labels = None if y is None else [class_label(int(y[r * per_row]), names) for r in picked]
    save_grid(chosen, path, cols, labels)
    return Path(path)
