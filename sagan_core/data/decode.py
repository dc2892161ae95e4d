"""Decoding for `sagan prepare`: one image file -> a uint8 C x H x W array, or a rejection reason;
many of them in order, in a pool of worker processes.

Valid images are EXIF-rotated, converted to `data.channels` (grayscale, RGBA over white, palette,
16-bit scaled to 8-bit), resized (short side, antialiased) and center-cropped to `data.resolution`.
Chunks come back in source order with a bounded number in flight, so memory stays flat.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sagan_core.config import DataConfig
from sagan_core.data.archives import BadMember
from sagan_core.data.sources import Source
from sagan_core.errors import ConfigError


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
    if isinstance(key, BadMember):  # an archive member rejected before it was read
        raise Rejected(key.reason)
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
    chunks = source.payloads(chunk, cfg.max_pixels)
    if workers <= 1:
        _init_worker(source, cfg)
        yield from map(_decode_chunk, chunks)
        return
    # forkserver, not fork: a caller may run threads (the Prefect flow runs prepare in-process, next to
    # Prefect's threads), and forking a threaded process can deadlock the children on locks held by
    # threads that do not exist in them.
    ctx = mp.get_context("forkserver")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(source, cfg)) as pool:
        yield from _in_order(pool, _decode_chunk, chunks, ahead=2 * workers)


def _in_order(pool, fn, items, ahead: int) -> Iterator:
    """fn(item) for each item in `pool`, results in order, at most `ahead` in flight. Not
    `pool.imap`: it submits every item at once, so finished results pile up in memory while the
    consumer is slower (here: decoded image chunks waiting for Inception or the writer)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.apply_async(fn, (item,)))
        if len(pending) >= ahead:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def read_rgb(path: Path) -> np.ndarray:
    """An image file as pytorch-fid's ImagePathDataset reads it: PIL, converted to RGB, H x W x 3 uint8."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"{path}: not a readable image ({type(e).__name__})") from None


def _read_rgb_chunk(paths: list[Path]) -> list[np.ndarray]:
    return [read_rgb(f) for f in paths]


def read_rgb_chunks(chunks: list[list[Path]], workers: int) -> Iterator[list[np.ndarray]]:
    """Each chunk of image files decoded (`read_rgb`), in order. With workers > 1 the files are
    decoded in that many processes, up to 2 chunks per worker ahead of the consumer, so decoding
    overlaps with whatever the caller does with a chunk (the Inception pass) and memory stays
    bounded. A worker's ConfigError (an unreadable file) is raised here."""
    if workers <= 1 or len(chunks) < 2:
        yield from map(_read_rgb_chunk, chunks)
        return
    # forkserver as in decode_all; the workers import this module (PIL, numpy), never torch.
    with mp.get_context("forkserver").Pool(min(workers, len(chunks))) as pool:
        yield from _in_order(pool, _read_rgb_chunk, chunks, ahead=2 * workers)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1
