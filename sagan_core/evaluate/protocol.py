"""`sagan evaluate`: FID/IS/KID/PRDC of a generator from seeded samples against the prepared data's
reference statistics, cached by everything that shapes them; the record says under which protocol.
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

from sagan_core.atomic import write_json
from sagan_core.data.dataset import open_prepared
from sagan_core.device import resolve_device
from sagan_core.errors import ConfigError, SaganError
from sagan_core.evaluate import inception as inc
from sagan_core.evaluate.fid import PROTOCOL, features_pass, load_stats, save_stats
from sagan_core.evaluate.frechet import frechet_with_method
from sagan_core.evaluate.identity import protocol
from sagan_core.evaluate.metrics import IS_SPLITS, ISAccumulator, Stats, kid
from sagan_core.evaluate.prdc import K as PRDC_K
from sagan_core.evaluate.prdc import prdc
from sagan_core.model.checkpoint import load_generator

log = logging.getLogger("sagan.evaluate")

REFERENCE_SUBSET_SEED = 0  # fixed: which images form a reference subset is part of the protocol


def reference_indices(n: int, size: int | None) -> np.ndarray:
    """All images, or a fixed seeded subset (sorted: sequential reads)."""
    if size is None or size >= n:
        return np.arange(n)
    rng = np.random.default_rng(REFERENCE_SUBSET_SEED)
    return np.sort(rng.choice(n, size, replace=False))


def _array_batches(images: np.ndarray, idx: np.ndarray, batch_size: int):
    for start in range(0, len(idx), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(images[idx[start : start + batch_size]]))


def reference_protocol(content_hash: str, weights_sha: str, dims: int, size: int,
                       dataset_size: int) -> dict[str, Any]:
    return {
        "format": 1,
        "protocol": PROTOCOL,
        "content_hash": content_hash,
        "weights_sha256": weights_sha,
        "dims": dims,
        "reference_size": size,
        "subset_seed": REFERENCE_SUBSET_SEED if size < dataset_size else None,
    }


def cache_path(cache_dir: str | Path, ref_protocol: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(ref_protocol, sort_keys=True).encode()).hexdigest()
    content, dims, size = ref_protocol["content_hash"], ref_protocol["dims"], ref_protocol["reference_size"]
    return Path(cache_dir) / f"{content[:12]}-d{dims}-n{size}-{key[:12]}.npz"


def reference_stats(
    params, net: inc.InceptionFeatures, weights_sha: str, device: torch.device, progress: bool = True
) -> tuple[Stats, dict[str, Any]]:
    ev = params.eval
    if ev.reference_split != "prepared":
        return _reference_file(Path(ev.reference_split))
    data = open_prepared(params.data.prepared_dir)
    idx = reference_indices(len(data), ev.reference_size)
    ref_protocol = reference_protocol(
        data.manifest["content_hash"], weights_sha, ev.dims, len(idx), len(data)
    )
    path = cache_path(ev.cache_dir, ref_protocol)
    info = {"reference_size": len(idx), "reference_content_hash": ref_protocol["content_hash"]}
    if path.is_file() and (stats := load_stats(path)).protocol == ref_protocol:
        log.info("reference statistics from cache %s", path)
        return stats, info | {"stats_cache": "hit", "stats_file": str(path), "reference_seconds": 0.0}
    batches = _array_batches(data.images, idx, ev.batch_size)
    n_batches = -(-len(idx) // ev.batch_size)
    stats, seconds, _ = features_pass(
        net, batches, n_batches, device, keep_features=True, progress=progress, desc="reference"
    )
    stats.protocol = ref_protocol
    save_stats(path, stats)
    log.info("reference statistics cached in %s", path)
    return stats, info | {"stats_cache": "miss", "stats_file": str(path), "reference_seconds": seconds}


def _reference_file(path: Path) -> tuple[Stats, dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"eval.reference_split: no such statistics file {path}")
    stats = load_stats(path)
    size = stats.num if stats.num is not None else (stats.protocol or {}).get("reference_size")
    return stats, {"reference_size": size, "stats_cache": "file", "reference_seconds": 0.0}


def sample_uint8(g, n: int, batch_size: int, seed: int, device: torch.device):
    """n uint8 samples: fixed CPU seed, class-balanced labels when conditional."""
    spec = g.spec
    gen = torch.Generator().manual_seed(seed)
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


PRDC_KEYS = ("precision", "recall", "density", "coverage")


def evaluate(params, checkpoint: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Writes eval.metrics_file (the numbers) and eval.record_file (everything); the record."""
    ckpt = Path(checkpoint) if checkpoint else params.train.checkpoint
    device = resolve_device(params.eval.device, "eval.device")
    g, meta = load_generator(ckpt, params.eval.use_ema, device)  # a bad checkpoint fails first
    about = {"checkpoint": str(ckpt), "generator_step": int(meta["step"]), "ema": params.eval.use_ema}
    result = score_generator(params, g, about, device, progress)
    write_json(params.eval.record_file, result)
    write_json(params.eval.metrics_file, metrics_only(result))
    return result


def score_generator(
    params, g, about: dict[str, Any], device: torch.device | None = None, progress: bool = True
) -> dict[str, Any]:
    """The evaluation record of `g` (`.spec`, `g(z, y)` in [-1, 1]); writes nothing. The registry
    re-scores registered generators through here: one protocol for all."""
    ev = params.eval
    device = device or resolve_device(ev.device, "eval.device")
    weights = inc.resolve_weights(ev.inception_weights)
    weights_sha = inc.file_sha256(weights)
    net = inc.load_net(weights, ev.dims, True, device)
    ref, ref_info = reference_stats(params, net, weights_sha, device, progress)
    # every evaluation warns (each record is read alone), after the checks: a failure stays one line
    if not (official := inc.is_official(weights_sha)):
        log.warning(inc.unofficial_warning(weights))
    is_acc = ISAccumulator(ev.num_samples)
    batches = sample_uint8(g, ev.num_samples, ev.batch_size, ev.seed, device)
    n_batches = -(-ev.num_samples // ev.batch_size)
    gen, seconds, n = features_pass(
        net, batches, n_batches, device, keep_features=True, is_acc=is_acc, progress=progress, desc="samples"
    )
    t0 = time.perf_counter()
    fid, fid_method = frechet_with_method(gen, ref)
    fid_seconds = time.perf_counter() - t0
    is_mean, is_std = is_acc.result()
    kid_mean, kid_std, fidelity = None, None, dict.fromkeys(PRDC_KEYS)  # None: not computed
    if ref.features is not None:
        kid_mean, kid_std = kid(gen.features, ref.features, ev.kid_subsets, ev.kid_subset_size, ev.seed)
        if min(len(gen.features), len(ref.features)) > PRDC_K:
            fidelity = prdc(ref.features, gen.features, device=device)
    else:
        log.warning("%s has no features: KID, precision, recall, density, coverage not computed",
                    ev.reference_split)
    return {  # eval.record.json, scores first (for people reading it)
        **{"fid": fid, "is_mean": is_mean, "is_std": is_std, "kid_mean": kid_mean, "kid_std": kid_std},
        **fidelity,
        "prdc_k": PRDC_K,
        "num_samples": n,
        "reference_split": ev.reference_split,
        **{k: v for k, v in ref_info.items() if k != "reference_seconds"},  # a timing, below
        "dims": ev.dims,
        "is_splits": IS_SPLITS,
        "kid_subsets": ev.kid_subsets,
        "kid_subset_size": min(ev.kid_subset_size, n, ref.num or n),  # what KID could actually draw
        "weights_file": weights.name,
        "weights_sha256": weights_sha,
        "weights_official": official,
        **about,
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


def expected_protocol(params) -> dict[str, Any]:
    """The protocol an evaluation under `params` would record now, without running Inception."""
    ev = params.eval
    fields: dict[str, Any] = {"num_samples": ev.num_samples, "reference_split": ev.reference_split}
    if ev.reference_split == "prepared":
        data = open_prepared(params.data.prepared_dir)
        fields["reference_size"] = len(reference_indices(len(data), ev.reference_size))
        fields["reference_content_hash"] = data.manifest["content_hash"]
    else:
        fields["reference_size"] = _reference_file(Path(ev.reference_split))[1]["reference_size"]
    fields["weights_sha256"] = inc.file_sha256(inc.resolve_weights(ev.inception_weights))
    return protocol({**fields, "dims": ev.dims, "protocol": PROTOCOL})


def metrics_only(record: dict[str, Any]) -> dict[str, Any]:
    """eval.json: the numbers DVC compares; those that could not be computed are absent."""
    keys = ("fid", "kid_mean", "kid_std", "is_mean", "is_std", *PRDC_KEYS, "generator_step")
    return {k: record[k] for k in keys if isinstance(record.get(k), (int, float))}
