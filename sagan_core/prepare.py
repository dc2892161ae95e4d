"""`sagan prepare`: turn a source into the prepared dataset (see data.py for the layout).

Sources: "demo" (the bundled real MNIST test set, 10k digits) and an ImageFolder directory
(`root/<class>/*.png|jpg`; a flat folder of images is one unlabelled set -> unconditional).
Images are converted to `data.channels`, resized so the short side is `data.resolution`, and
center-cropped; the output is streamed into a memory-mapped array, never held in memory whole.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from .config import DataConfig
from .errors import ConfigError, SaganError

DEMO_DIR = Path(__file__).parent / "assets" / "mnist"
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass
class Source:
    """A list of items to decode, each with a class index, and the sorted class names."""

    name: str
    class_names: list[str]
    items: list[tuple[Any, int]]  # (path or in-memory image, label)
    rejected: list[dict[str, str]] = field(default_factory=list)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def demo_source() -> Source:
    images = _read_idx(DEMO_DIR / "t10k-images-idx3-ubyte.gz")
    labels = _read_idx(DEMO_DIR / "t10k-labels-idx1-ubyte.gz")
    items = [(Image.fromarray(img, mode="L"), int(lab)) for img, lab in zip(images, labels)]
    return Source("demo (MNIST test set)", [str(i) for i in range(10)], items)


def folder_source(root: Path) -> Source:
    def images_in(d: Path) -> list[Path]:
        return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

    class_dirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name
    )
    if class_dirs:
        class_names = [d.name for d in class_dirs]
        items = [(p, i) for i, d in enumerate(class_dirs) for p in images_in(d)]
    else:
        class_names, items = [], [(p, 0) for p in images_in(root)]
    return Source(str(root), class_names, items)


def resolve_source(spec: str) -> Source:
    if spec == "demo":
        return demo_source()
    path = Path(spec).expanduser()
    if path.is_dir():
        return folder_source(path)
    raise ConfigError(f"data.source: expected 'demo' or an image folder, got {spec!r} (no such directory)")


def to_array(img: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """PIL image -> uint8 C x H x W: convert mode, resize short side (antialiased), center-crop."""
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _decode(item: Any, cfg: DataConfig) -> np.ndarray:
    if isinstance(item, Image.Image):
        return to_array(item, cfg.resolution, cfg.channels)
    with Image.open(item) as img:
        return to_array(img, cfg.resolution, cfg.channels)


def content_hash(images_path: Path, labels: np.ndarray, class_names: list[str]) -> str:
    h = hashlib.sha256()
    with open(images_path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    h.update(labels.astype("<i8").tobytes())
    h.update(json.dumps(class_names).encode())
    return h.hexdigest()


def iter_decoded(source: Source, cfg: DataConfig) -> Iterator[tuple[np.ndarray | None, int, str | None]]:
    for item, label in source.items:
        try:
            yield _decode(item, cfg), label, None
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            yield None, label, f"{type(e).__name__}: {e}"


def prepare(cfg: DataConfig, progress: bool = True) -> dict[str, Any]:
    """Build `cfg.prepared_dir` from `cfg.source`; returns the manifest."""
    source = resolve_source(cfg.source)
    out = Path(cfg.prepared_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_max = len(source.items)
    if n_max == 0:
        raise SaganError(f"data.source {cfg.source!r}: no images found")
    tmp_images = out / "images.npy.tmp"
    arr = np.lib.format.open_memmap(
        tmp_images, mode="w+", dtype=np.uint8, shape=(n_max, cfg.channels, cfg.resolution, cfg.resolution)
    )
    labels, rejected, n = [], list(source.rejected), 0
    items = iter_decoded(source, cfg)
    for (img, label, err), (item, _) in tqdm(
        zip(items, source.items), total=n_max, desc="prepare", unit="img", disable=not progress
    ):
        if img is None:
            rejected.append({"file": str(item), "reason": err})
            continue
        arr[n], n = img, n + 1
        labels.append(label)
    arr.flush()
    del arr
    if n == 0:
        tmp_images.unlink(missing_ok=True)
        raise SaganError(f"data.source {cfg.source!r}: no valid images ({len(rejected)} rejected)")
    frac = len(rejected) / (n + len(rejected))
    if frac > cfg.max_rejected_fraction:
        tmp_images.unlink(missing_ok=True)
        raise SaganError(
            f"data.source {cfg.source!r}: {len(rejected)} of {n + len(rejected)} images rejected "
            f"({frac:.1%} > data.max_rejected_fraction={cfg.max_rejected_fraction})"
        )
    final = np.load(tmp_images, mmap_mode="r")[:n]
    np.save(out / "images.npy", final)
    del final
    tmp_images.unlink()
    label_arr = np.asarray(labels, dtype=np.int64)
    np.save(out / "labels.npy", label_arr)
    manifest = {
        "source": source.name,
        "num_images": n,
        "num_classes": len(source.class_names),
        "class_names": source.class_names,
        "resolution": cfg.resolution,
        "channels": cfg.channels,
        "content_hash": content_hash(out / "images.npy", label_arr, source.class_names),
        "rejected": rejected,
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out / "manifest.json")
    return manifest
