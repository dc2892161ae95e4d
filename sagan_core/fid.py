"""pytorch-fid statistics files and image folders, and the Inception pass that turns images into statistics.

- Features come from `sagan_core.inception` (pytorch-fid's InceptionV3, fed exactly as pytorch-fid
  feeds it), one uint8 batch at a time, into `sagan_core.metrics`' streaming accumulators, so
  images and activations in memory are bounded by the batch size.
- Folders are read as pytorch-fid reads them (its extensions, top level only, sorted, PIL RGB).
- Statistics files are pytorch-fid's `.npz` (`mu`, `sigma`); ours may add `features` (for KID) and
  `protocol` (a JSON string), which pytorch-fid ignores.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pytorch_fid.fid_score import IMAGE_EXTENSIONS
from tqdm import tqdm

from . import inception as inc
from .atomic import write_atomic, write_json
from .device import resolve_device
from .errors import ConfigError, SaganError
from .metrics import IS_SPLITS, ISAccumulator, Stats, StatsAccumulator, frechet_with_method, kid

log = logging.getLogger("sagan.fid")

REFERENCE_SUBSET_SEED = 0  # fixed: which images form a reference subset is part of the protocol
PROTOCOL = "pytorch-fid 0.3.0 InceptionV3: uint8 images / 255, gray->RGB, bilinear 299 (align_corners=False)"


# ---------------------------------------------------------------- statistics files and folders


def load_stats(path: str | Path) -> Stats:
    path = Path(path)
    try:
        with np.load(path) as f:
            if "mu" not in f or "sigma" not in f:
                raise ConfigError(f"{path}: not a statistics file (expected arrays 'mu' and 'sigma')")
            features = f.get("features")
            protocol = json.loads(str(f["protocol"])) if "protocol" in f else None
            stats = Stats(f["mu"][:], f["sigma"][:], features, protocol)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: not a readable .npz statistics file ({e})") from None
    d = stats.mu.shape
    if len(d) != 1 or stats.sigma.shape != (d[0], d[0]):
        raise ConfigError(f"{path}: inconsistent statistics (mu {stats.mu.shape}, sigma {stats.sigma.shape})")
    return stats


def save_stats(path: str | Path, stats: Stats) -> None:
    """pytorch-fid's format (mu, sigma), plus our optional extras; written atomically."""
    arrays: dict[str, Any] = {"mu": stats.mu, "sigma": stats.sigma}
    if stats.features is not None:
        arrays["features"] = stats.features
    if stats.protocol is not None:
        arrays["protocol"] = np.array(json.dumps(stats.protocol, sort_keys=True))
    write_atomic(path, lambda f: np.savez(f, **arrays))


def list_images(folder: Path) -> list[Path]:
    """The files pytorch-fid reads from a folder: its extensions, top level only, sorted."""
    files = sorted(f for ext in IMAGE_EXTENSIONS for f in folder.glob(f"*.{ext}"))
    if not files:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise ConfigError(f"{folder}: no images ({exts}) in this folder")
    return files


def _read_rgb(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("RGB"))  # exactly pytorch-fid's ImagePathDataset
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"{path}: not a readable image ({type(e).__name__})") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def _uint8_batches_from_files(files: list[Path], batch_size: int):
    for start in range(0, len(files), batch_size):
        imgs = [_read_rgb(f) for f in files[start : start + batch_size]]
        if all(im.shape == imgs[0].shape for im in imgs):
            yield torch.stack(imgs)
        else:  # mixed sizes: Inception resizes each image on its own, so one at a time is identical
            yield from (im[None] for im in imgs)


def features_pass(
    net: inc.InceptionFeatures,
    batches,
    total_batches: int,
    device: torch.device,
    keep_features: bool = False,
    is_acc: ISAccumulator | None = None,
    progress: bool = True,
    desc: str = "inception",
) -> tuple[Stats, float, int]:
    """Run uint8 batches through Inception: (statistics, seconds, images)."""
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
    path: str | Path,
    dims: int,
    batch_size: int,
    device: torch.device,
    weights: Path | None = None,
    progress: bool = True,
) -> Stats:
    """Statistics of a folder of images (computed) or of a .npz file (loaded), like pytorch-fid."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return load_stats(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such folder or file")
    if not path.is_dir():
        raise ConfigError(f"{path}: expected a folder of images or a .npz statistics file")
    files = list_images(path)
    net = inc.load_net(weights or inc.resolve_weights(), dims, False, device)
    n_batches = sum(1 for _ in range(0, len(files), batch_size))
    batches = _uint8_batches_from_files(files, batch_size)
    stats, _, _ = features_pass(net, batches, n_batches, device, progress=progress, desc=path.name)
    return stats


# ---------------------------------------------------------------- sagan evaluate


def reference_indices(n: int, size: int | None) -> np.ndarray:
    """All images, or a fixed seeded subset (sorted, for sequential reads of the memory map)."""
    if size is None or size >= n:
        return np.arange(n)
    rng = np.random.default_rng(REFERENCE_SUBSET_SEED)
    return np.sort(rng.choice(n, size, replace=False))


def _array_batches(images: np.ndarray, idx: np.ndarray, batch_size: int):
    for start in range(0, len(idx), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(images[idx[start : start + batch_size]]))


def reference_protocol(
    content_hash: str, weights_sha: str, dims: int, size: int, dataset_size: int
) -> dict[str, Any]:
    """Everything that determines reference statistics; the cache key is its hash."""
    return {
        "format": 1,
        "protocol": PROTOCOL,
        "content_hash": content_hash,
        "weights_sha256": weights_sha,
        "dims": dims,
        "reference_size": size,
        "subset_seed": REFERENCE_SUBSET_SEED if size < dataset_size else None,
    }


def cache_path(cache_dir: str | Path, protocol: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()
    name = f"{protocol['content_hash'][:12]}-d{protocol['dims']}-n{protocol['reference_size']}-{key[:12]}.npz"
    return Path(cache_dir) / name


def reference_stats(
    params, net: inc.InceptionFeatures, weights_sha: str, device: torch.device, progress: bool = True
) -> tuple[Stats, dict[str, Any]]:
    """Reference statistics: a .npz file, or the prepared dataset's (cached; computed on a miss)."""
    from .data import open_prepared

    ev = params.eval
    if ev.reference_split != "prepared":
        path = Path(ev.reference_split)
        if not path.is_file():
            raise ConfigError(f"eval.reference_split: no such statistics file {path}")
        stats = load_stats(path)
        size = stats.num if stats.num is not None else (stats.protocol or {}).get("reference_size")
        return stats, {"reference_size": size, "stats_cache": "file", "reference_seconds": 0.0}
    data = open_prepared(params.data.prepared_dir)
    idx = reference_indices(len(data), ev.reference_size)
    protocol = reference_protocol(data.manifest["content_hash"], weights_sha, ev.dims, len(idx), len(data))
    path = cache_path(ev.cache_dir, protocol)
    info = {"reference_size": len(idx), "reference_content_hash": protocol["content_hash"]}
    if path.is_file():
        stats = load_stats(path)
        if stats.protocol == protocol:
            log.info("reference statistics from cache %s", path)
            return stats, info | {"stats_cache": "hit", "stats_file": str(path), "reference_seconds": 0.0}
    batches = _array_batches(data.images, idx, ev.batch_size)
    n_batches = -(-len(idx) // ev.batch_size)
    stats, seconds, _ = features_pass(
        net, batches, n_batches, device, keep_features=True, progress=progress, desc="reference"
    )
    stats.protocol = protocol
    save_stats(path, stats)
    log.info("reference statistics cached in %s", path)
    return stats, info | {"stats_cache": "miss", "stats_file": str(path), "reference_seconds": seconds}


def sample_uint8(g, n: int, batch_size: int, seed: int, device: torch.device):
    """n generated images as uint8 batches: fixed seed, class-balanced labels when conditional."""
    spec = g.spec
    gen = torch.Generator().manual_seed(seed)  # CPU noise: the same samples on every device
    labels = torch.arange(n) % spec.num_classes if spec.num_classes else None
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        z = torch.randn(b, spec.z_dim, generator=gen).to(device)
        y = None if labels is None else labels[start : start + b].to(device)
        with torch.inference_mode():
            x = g(z, y)
        if not torch.isfinite(x).all():
            raise SaganError("the generator produced NaN/Inf images; this checkpoint cannot be evaluated")
        yield inc.quantize(x)


def evaluate(params, checkpoint: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """FID / IS / KID of a checkpoint's generator against the reference; writes eval.metrics_file."""
    from .checkpoint import load_generator

    ev = params.eval
    ckpt = Path(checkpoint) if checkpoint else params.train.checkpoint
    device = resolve_device(ev.device, "eval.device")
    weights = inc.resolve_weights(ev.inception_weights)
    weights_sha = inc.file_sha256(weights)
    g, meta = load_generator(ckpt, ev.use_ema, device)
    net = inc.load_net(weights, ev.dims, True, device)
    ref, ref_info = reference_stats(params, net, weights_sha, device, progress)

    is_acc = ISAccumulator(ev.num_samples)
    n_batches = -(-ev.num_samples // ev.batch_size)
    batches = sample_uint8(g, ev.num_samples, ev.batch_size, ev.seed, device)
    gen, seconds, n = features_pass(
        net, batches, n_batches, device, keep_features=True, is_acc=is_acc, progress=progress, desc="samples"
    )
    t0 = time.perf_counter()
    fid, fid_method = frechet_with_method(gen, ref)
    fid_seconds = time.perf_counter() - t0
    is_mean, is_std = is_acc.result()
    kid_mean = kid_std = None
    if ref.features is not None:
        kid_mean, kid_std = kid(gen.features, ref.features, ev.kid_subsets, ev.kid_subset_size, ev.seed)
    else:
        log.warning("%s has no features: KID not computed", ev.reference_split)
    result = {
        "fid": fid,
        "is_mean": is_mean,
        "is_std": is_std,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "num_samples": n,
        "reference_split": ev.reference_split,
        **{k: v for k, v in ref_info.items() if k != "reference_seconds"},
        "dims": ev.dims,
        "is_splits": IS_SPLITS,
        "kid_subsets": ev.kid_subsets,
        "kid_subset_size": min(ev.kid_subset_size, n, ref.num or n),
        "weights_file": weights.name,
        "weights_sha256": weights_sha,
        "checkpoint": str(ckpt),
        "generator_step": int(meta["step"]),
        "ema": ev.use_ema,
        "class_balanced": bool(g.spec.num_classes),
        "seed": ev.seed,
        "protocol": PROTOCOL,
        "fid_method": fid_method,
        "timing": {
            "device": str(device),
            "samples_seconds": seconds,
            "samples_images_per_s": n / seconds,
            "reference_seconds": ref_info["reference_seconds"],
            "frechet_seconds": fid_seconds,
        },
    }
    write_json(ev.metrics_file, result)
    return result
