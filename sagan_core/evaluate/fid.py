"""pytorch-fid's statistics files (`mu`, `sigma`; ours add `features`, `protocol`), folders read as
it reads them (decoded in workers), and the Inception pass, streamed one uint8 batch at a time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_fid.fid_score import IMAGE_EXTENSIONS
from tqdm import tqdm

from sagan_core.atomic import write_atomic
from sagan_core.data.decode import read_rgb_chunks
from sagan_core.data.pool import available_cores
from sagan_core.errors import ConfigError
from sagan_core.evaluate import inception as inc
from sagan_core.evaluate.metrics import ISAccumulator, Stats, StatsAccumulator

# the feature recipe: part of the protocol and of every cached reference's key
PROTOCOL = "pytorch-fid 0.3.0 InceptionV3: uint8 images / 255, gray->RGB, bilinear 299 (align_corners=False)"


def load_stats(path: str | Path) -> Stats:
    path = Path(path)
    try:
        with np.load(path) as f:
            if "mu" not in f or "sigma" not in f:
                raise ConfigError(f"{path}: not a statistics file (expected arrays 'mu' and 'sigma')")
            protocol = json.loads(str(f["protocol"])) if "protocol" in f else None
            stats = Stats(f["mu"][:], f["sigma"][:], f.get("features"), protocol)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable .npz statistics file ({e})") from None
    d = stats.mu.shape
    if len(d) != 1 or stats.sigma.shape != (d[0], d[0]):
        raise ConfigError(f"{path}: inconsistent statistics (mu {stats.mu.shape}, sigma {stats.sigma.shape})")
    return stats


def save_stats(path: str | Path, stats: Stats) -> None:
    arrays: dict[str, Any] = {"mu": stats.mu, "sigma": stats.sigma}
    if stats.features is not None:
        arrays["features"] = stats.features
    if stats.protocol is not None:
        arrays["protocol"] = np.array(json.dumps(stats.protocol, sort_keys=True))
    write_atomic(path, lambda f: np.savez(f, **arrays))


def list_images(folder: Path) -> list[Path]:
    files = sorted(f for ext in IMAGE_EXTENSIONS for f in folder.glob(f"*.{ext}"))
    if not files:
        raise ConfigError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")
    return files


def _uint8_batches_from_files(files: list[Path], batch_size: int, workers: int | None = None):
    chunks = [files[start : start + batch_size] for start in range(0, len(files), batch_size)]
    for arrays in read_rgb_chunks(chunks, min(available_cores(), 8) if workers is None else workers):
        imgs = [torch.from_numpy(a).permute(2, 0, 1) for a in arrays]
        if all(im.shape == imgs[0].shape for im in imgs):
            yield torch.stack(imgs)
        else:  # mixed sizes: one at a time (Inception resizes each alike)
            yield from (im[None] for im in imgs)


def features_pass(
    net: inc.InceptionFeatures, batches, total_batches: int, device: torch.device,
    keep_features: bool = False, is_acc: ISAccumulator | None = None, progress: bool = True,
    desc: str = "inception",
) -> tuple[Stats, float, int]:
    acc = StatsAccumulator(keep_features)
    t0 = time.perf_counter()
    with inc.exact_fp32():
        for u8 in tqdm(batches, total=total_batches, desc=desc, unit="batch", disable=not progress):
            feat, logits = inc.run_batch(net, u8, device)
            acc.add(feat)
            if is_acc is not None:
                is_acc.add(logits)
    return acc.result(), time.perf_counter() - t0, acc.n


def stats_of_path(
    path: str | Path, dims: int, batch_size: int, device: torch.device, weights: Path | None = None,
    progress: bool = True, net: inc.InceptionFeatures | None = None,
) -> Stats:
    """Statistics of a folder (through `net`, else the fast path) or of a .npz file, like pytorch-fid."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return load_stats(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such folder or file")
    if not path.is_dir():
        raise ConfigError(f"{path}: expected a folder of images or a .npz statistics file")
    files = list_images(path)
    net = net or inc.load_net(weights or inc.resolve_weights(), dims, False, device, fast=True)
    n_batches = sum(1 for _ in range(0, len(files), batch_size))
    batches = _uint8_batches_from_files(files, batch_size)
    # up to `dims` images (<= 16 MB): features for the exact sample-space Fréchet distance
    keep = len(files) <= dims
    return features_pass(net, batches, n_batches, device, keep, progress=progress, desc=path.name)[0]
