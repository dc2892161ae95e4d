"""`sagan prepare`: validate and decode every image of `data.source` into the prepared dataset.

Every file is checked; a bad one is never fatal on its own. It is listed in the manifest's
`rejected` entries with one of these reasons (the prefix before ':' is stable, for tools):

  empty file | unreadable | not an image | corrupt | truncated | decompression bomb | too small |
  unsupported mode | not inside a class folder

Prepare fails (SaganError, exit 1) only when no valid image remains or more than
`data.max_rejected_fraction` of the files were rejected.

Decoding (sagan_core.decode) runs in `data.workers` processes; chunks come back in source order and
are appended to the output file as they arrive, so memory stays flat however large the source is.
The layout written is described in data.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sagan_core.atomic import write_atomic, write_json
from sagan_core.config import DataConfig
from sagan_core.data.decode import available_cores, decode_all
from sagan_core.data.sources import Source, open_source
from sagan_core.errors import SaganError

_HEADER_LEN = 128  # fixed .npy header size, so the final image count can be written in place


# --- the output -------------------------------------------------------------------------------


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A version-1.0 .npy header for uint8 C-order data, padded to a fixed length."""
    d = repr({"descr": "|u1", "fortran_order": False, "shape": shape}).encode("latin1")
    body = d + b" " * (_HEADER_LEN - 10 - len(d) - 1) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body


def _reorder(path: Path, perm: np.ndarray, img_shape: tuple[int, ...], chunk: int) -> None:
    """Rewrite the image file with rows in `perm` order, a chunk at a time."""
    src = np.load(path, mmap_mode="r")

    def write(f) -> None:
        f.write(_npy_header((len(perm), *img_shape)))
        for i in range(0, len(perm), chunk):
            f.write(np.ascontiguousarray(src[perm[i : i + chunk]]).tobytes())

    write_atomic(path, write)


def prepare(cfg: DataConfig, progress: bool = True) -> dict[str, Any]:
    """Build `cfg.prepared_dir` from `cfg.source`; returns the manifest."""
    with open_source(cfg.source) as source:
        return _prepare(source, cfg, progress)


def _prepare(source: Source, cfg: DataConfig, progress: bool) -> dict[str, Any]:
    total = len(source.items) + len(source.rejected)
    if not source.items:
        raise SaganError(f"data.source {cfg.source!r}: no images found ({total} rejected)")
    out = Path(cfg.prepared_dir)
    out.mkdir(parents=True, exist_ok=True)
    img_shape = (cfg.channels, cfg.resolution, cfg.resolution)
    # ~4 MB of decoded pixels per chunk: big enough to amortise IPC, small enough to bound memory.
    chunk = max(8, min(512, (4 << 20) // int(np.prod(img_shape))))
    tmp_images = out / "images.npy.tmp"
    try:
        n, kept, bad = _decode_to_file(source, cfg, tmp_images, img_shape, chunk, progress)
        rejected = list(source.rejected) + [r for _, r in sorted(bad, key=lambda b: b[0])]
        _check_rejections(cfg, n, rejected, total)
    except BaseException:
        tmp_images.unlink(missing_ok=True)
        raise
    perm = np.argsort(np.asarray(kept), kind="stable")
    if np.any(perm != np.arange(n)):  # archives are read in archive order: restore sorted order
        _reorder(tmp_images, perm, img_shape, chunk)
    label_arr = np.asarray([source.items[kept[i]][1] for i in perm], dtype=np.int64)
    content_hash = _content_hash(tmp_images, img_shape, n, source.class_names, label_arr)
    np.save(out / "labels.npy", label_arr)
    os.replace(tmp_images, out / "images.npy")
    counts = np.bincount(label_arr, minlength=max(1, len(source.class_names))).tolist()
    manifest = {
        "source": source.name,
        "num_images": n,
        "num_classes": len(source.class_names),
        "class_names": source.class_names,
        "class_counts": counts if source.class_names else [],
        "resolution": cfg.resolution,
        "channels": cfg.channels,
        "content_hash": content_hash,
        "num_rejected": len(rejected),
        "num_ignored": source.ignored,
        "rejected": rejected,
    }
    write_json(cfg.manifest_file, manifest)
    return manifest


def _decode_to_file(
    source: Source, cfg: DataConfig, path: Path, img_shape: tuple[int, ...], chunk: int, progress: bool
) -> tuple[int, list[int], list[tuple[int, dict[str, str]]]]:
    """Decode every item into the .npy file `path`, streaming; (images written, item position of
    each written image, (position, rejection) of each rejected item)."""
    # Auto: one process per core, but none for tiny sources (pool start-up would dominate).
    workers = cfg.workers or min(available_cores(), max(1, len(source.items) // 256))
    order = source.read_order if source.read_order is not None else range(len(source.items))
    kept: list[int] = []  # item positions of the valid images, in the order they were written
    bad: list[tuple[int, dict[str, str]]] = []
    n = done = 0
    bar = tqdm(total=len(source.items), desc="prepare", unit="img", disable=not progress, smoothing=0.1)
    with bar, open(path, "wb") as f:
        f.write(_npy_header((0, *img_shape)))  # rewritten with the real count at the end
        for arrays, reasons in decode_all(source, cfg, workers, chunk):
            f.write(np.ascontiguousarray(arrays).tobytes())
            for reason in reasons:
                pos = order[done]
                done += 1
                if reason is None:
                    kept.append(pos)
                else:
                    bad.append((pos, {"file": str(source.items[pos][0]), "reason": reason}))
            n += len(arrays)
            bar.update(len(reasons))
            bar.set_postfix(rejected=len(bad) + len(source.rejected), refresh=False)
        f.seek(0)
        f.write(_npy_header((n, *img_shape)))
    return n, kept, bad


def _check_rejections(cfg: DataConfig, n: int, rejected: list[dict[str, str]], total: int) -> None:
    if n == 0:
        raise SaganError(f"data.source {cfg.source!r}: no valid images ({len(rejected)} rejected)")
    frac = len(rejected) / total
    if frac > cfg.max_rejected_fraction:
        raise SaganError(
            f"data.source {cfg.source!r}: {len(rejected)} of {total} images rejected "
            f"({frac:.1%} > data.max_rejected_fraction={cfg.max_rejected_fraction}): "
            + ", ".join(f"{k} {v}" for k, v in rejection_summary({"rejected": rejected}).items())
        )


def _content_hash(
    images: Path, img_shape: tuple[int, ...], n: int, class_names: list[str], labels: np.ndarray
) -> str:
    """SHA-256 of the prepared bytes (pixels, shape, labels, class names), nothing about the
    source's location: identical input and params give an identical hash anywhere."""
    hasher = hashlib.sha256()
    with open(images, "rb") as f:
        f.seek(_HEADER_LEN)
        while block := f.read(1 << 22):
            hasher.update(block)
    hasher.update(json.dumps([list(img_shape), n, class_names]).encode())
    hasher.update(labels.astype("<i8").tobytes())
    return hasher.hexdigest()


def rejection_summary(manifest: dict[str, Any]) -> dict[str, int]:
    """{'truncated': 2, 'too small': 1, ...}: counts per reason (the part before ':')."""
    counts: dict[str, int] = {}
    for r in manifest["rejected"]:
        kind = r["reason"].split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))
