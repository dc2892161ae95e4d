"""`sagan prepare`: validate and decode every image of `data.source` into the prepared dataset.

Every file is checked; a bad one is never fatal on its own. It is listed in the manifest's
`rejected` entries with one of these reasons (the prefix before ':' is stable, for tools):

  empty file | unreadable | not an image | corrupt | truncated | decompression bomb | too small |
  unsupported mode | not inside a class folder

Prepare fails (SaganError, exit 1) only when no valid image remains or more than
`data.max_rejected_fraction` of the files were rejected.

Valid images are EXIF-rotated, converted to `data.channels` (grayscale, RGBA over white, palette,
16-bit scaled to 8-bit), resized (short side, antialiased) and center-cropped to `data.resolution`.
Decoding runs in `data.workers` processes; chunks come back in source order and are appended to
the output file as they arrive, with a bounded number of chunks in flight, so memory stays flat
however large the source is. The layout written is described in data.py.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from .atomic import write_atomic, write_json
from .config import DataConfig
from .errors import SaganError
from .sources import Source, open_source

_HEADER_LEN = 128  # fixed .npy header size, so the final image count can be written in place


class Rejected(Exception):
    """A file that is not usable; str(e) is the manifest's reason."""


# --- one image --------------------------------------------------------------------------------


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> L or RGB, scaling 16/32-bit data and flattening alpha onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # PIL's own I;16 -> L conversion clips at 255 instead of scaling the 16-bit range.
        arr = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0  # float images in [0, 1]
        img = Image.fromarray(np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    target = "L" if channels == 1 else "RGB"
    try:
        return img.convert(target)
    except (ValueError, OSError):
        raise Rejected(f"unsupported mode: {img.mode}") from None


def to_array(img: Image.Image, resolution: int, channels: int) -> np.ndarray:
    """Loaded PIL image -> uint8 C x H x W: convert mode, resize short side, center-crop."""
    img = _to_mode(img, channels)
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    img = img.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _damage(e: BaseException) -> str:
    """PIL reports a file that ends early as 'image file is truncated' / 'Truncated File Read'."""
    return "truncated" if "truncated" in str(e).lower() or isinstance(e, EOFError) else "corrupt"


def decode(source: Source, key: Any, cfg: DataConfig) -> np.ndarray:
    """Validate and convert one item; raises Rejected with the reason."""
    if source.archive is not None and len(key) == 0:
        raise Rejected("empty file: 0 bytes")
    if source.root is not None:
        path = source.root / key
        try:
            st = os.stat(path)
        except OSError as e:  # dangling link, permission denied on the folder, vanished file
            raise Rejected(f"unreadable: {e.strerror or e}") from None
        if not os.path.isfile(path):
            raise Rejected("unreadable: not a regular file")
        if st.st_size == 0:
            raise Rejected("empty file: 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check size ourselves
            img = source.open(key)
    except UnidentifiedImageError:
        raise Rejected("not an image: no known image format") from None
    except Image.DecompressionBombError as e:
        raise Rejected(f"decompression bomb: {e}") from None
    except PermissionError as e:
        raise Rejected(f"unreadable: {e.strerror}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # SyntaxError: PIL's bad-header error
        raise Rejected(f"{_damage(e)}: {e}") from None
    with img:
        w, h = img.size
        if w * h > cfg.max_pixels:
            raise Rejected(f"decompression bomb: {w}x{h} pixels > data.max_pixels={cfg.max_pixels}")
        if min(w, h) < cfg.min_size:
            raise Rejected(f"too small: {w}x{h} < data.min_size={cfg.min_size}")
        if img.format == "JPEG":
            # Let libjpeg decode at a reduced scale when the image is much larger than needed
            # (faster, and the full-size pixels never exist in memory).
            s = cfg.resolution / min(w, h)
            img.draft(img.mode, (max(1, int(w * s)), max(1, int(h * s))))
        try:
            img.load()
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
            raise Rejected(f"{_damage(e)}: {e}") from None
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as e:  # noqa: BLE001 - a malformed EXIF block must not be fatal
            raise Rejected(f"corrupt: bad EXIF data ({e})") from None
        return to_array(img, cfg.resolution, cfg.channels)


# --- many images, in order, in parallel ---------------------------------------------------------

_worker: tuple[Source, DataConfig] | None = None


def _init_worker(source: Source, cfg: DataConfig) -> None:
    global _worker
    _worker = (source, cfg)
    Image.MAX_IMAGE_PIXELS = None  # the data.max_pixels check replaces PIL's global limit


def _decode_chunk(keys: list[Any]) -> tuple[np.ndarray, list[str | None]]:
    """A chunk -> (valid images stacked, one reason or None per key)."""
    assert _worker is not None
    source, cfg = _worker
    out = np.empty((len(keys), cfg.channels, cfg.resolution, cfg.resolution), dtype=np.uint8)
    reasons: list[str | None] = []
    n = 0
    for key in keys:
        try:
            out[n] = decode(source, key, cfg)
            n += 1
            reasons.append(None)
        except Rejected as e:
            reasons.append(str(e))
    return out[:n], reasons


def decode_all(
    source: Source, cfg: DataConfig, workers: int, chunk: int
) -> Iterator[tuple[np.ndarray, list[str | None]]]:
    """Decoded chunks in `source.read_order`. At most 2 chunks per worker are in flight at once."""
    chunks = source.payloads(chunk)
    if workers <= 1:
        _init_worker(source, cfg)
        yield from map(_decode_chunk, chunks)
        return
    # forkserver, not fork: a caller may run threads (the Prefect flow runs prepare in-process, next to
    # Prefect's threads), and forking a threaded process can deadlock the children on locks held by
    # threads that do not exist in them.
    ctx = mp.get_context("forkserver")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(source, cfg)) as pool:
        pending: deque = deque()
        for keys in chunks:
            pending.append(pool.apply_async(_decode_chunk, (keys,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


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
    # Auto: one process per core, but none for tiny sources (pool start-up would dominate).
    workers = cfg.workers or min(available_cores(), max(1, len(source.items) // 256))
    # ~4 MB of decoded pixels per chunk: big enough to amortise IPC, small enough to bound memory.
    chunk = max(8, min(512, (4 << 20) // int(np.prod(img_shape))))

    tmp_images = out / "images.npy.tmp"
    order = source.read_order if source.read_order is not None else range(len(source.items))
    kept: list[int] = []  # item positions of the valid images, in the order they were written
    bad: list[tuple[int, dict[str, str]]] = []
    n = 0
    bar = tqdm(total=len(source.items), desc="prepare", unit="img", disable=not progress, smoothing=0.1)
    try:
        with open(tmp_images, "wb") as f:
            f.write(_npy_header((0, *img_shape)))  # rewritten with the real count at the end
            done = 0
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
    except BaseException:
        tmp_images.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    rejected = list(source.rejected) + [r for _, r in sorted(bad, key=lambda b: b[0])]
    if n == 0:
        tmp_images.unlink(missing_ok=True)
        raise SaganError(f"data.source {cfg.source!r}: no valid images ({len(rejected)} rejected)")
    frac = len(rejected) / total
    if frac > cfg.max_rejected_fraction:
        tmp_images.unlink(missing_ok=True)
        raise SaganError(
            f"data.source {cfg.source!r}: {len(rejected)} of {total} images rejected "
            f"({frac:.1%} > data.max_rejected_fraction={cfg.max_rejected_fraction}): "
            + ", ".join(f"{k} {v}" for k, v in rejection_summary({"rejected": rejected}).items())
        )
    perm = np.argsort(np.asarray(kept), kind="stable")
    if np.any(perm != np.arange(n)):  # archives are read in archive order: restore sorted order
        _reorder(tmp_images, perm, img_shape, chunk)
    labels = [source.items[kept[i]][1] for i in perm]
    hasher = hashlib.sha256()
    with open(tmp_images, "rb") as f:
        f.seek(_HEADER_LEN)
        while block := f.read(1 << 22):
            hasher.update(block)
    label_arr = np.asarray(labels, dtype=np.int64)
    # The hash covers the prepared bytes (pixels, shape, labels, class names), nothing about the
    # source's location, so identical input and params give an identical hash anywhere.
    hasher.update(json.dumps([list(img_shape), n, source.class_names]).encode())
    hasher.update(label_arr.astype("<i8").tobytes())
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
        "content_hash": hasher.hexdigest(),
        "num_rejected": len(rejected),
        "num_ignored": source.ignored,
        "rejected": rejected,
    }
    write_json(out / "manifest.json", manifest)
    return manifest


def rejection_summary(manifest: dict[str, Any]) -> dict[str, int]:
    """{'truncated': 2, 'too small': 1, ...}: counts per reason (the part before ':')."""
    counts: dict[str, int] = {}
    for r in manifest["rejected"]:
        kind = r["reason"].split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))
