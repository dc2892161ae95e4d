"""One image -> a uint8 C x H x W array (EXIF-rotated, converted to `data.channels`, short side
resized, center-cropped), or a rejection reason; many in order in worker processes (pool.py).
Memory is bounded by `data.max_pixels` and the output size, whatever the aspect ratio; running out
of it, or a failing decoder, is one rejected file."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sagan_core.config import DataConfig
from sagan_core.data.archives import BadMember
from sagan_core.data.formats import OPENED_AS, RASTER_FORMATS, open_image
from sagan_core.data.pool import in_order, marked
from sagan_core.data.sources import Source
from sagan_core.errors import ConfigError

# Aspect ratios over 16:1 are cropped before resizing (a 3,125,000 x 16 strip resized whole to 256 px
# is ~36 GiB); only those, as box resampling rounds differently (233 of 400 ordinary images changed
# by 1 in some pixel): ordinary images stay bit-identical to earlier prepares.
_CROP_FIRST_ABOVE = 16


class Rejected(Exception):
    """A file that is not usable; str(e) is the manifest's reason."""


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> L or RGB, 16/32-bit scaled, alpha flattened onto white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # PIL's own I;16 -> L conversion clips at 255 instead of scaling the 16-bit range.
        arr = np.array(img, dtype=np.int32)  # a writable copy holding both; 4 B/pixel, then in place
        np.right_shift(np.clip(arr, 0, 65535, out=arr), 8, out=arr)
        img = Image.fromarray(arr.astype(np.uint8), mode="L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.size and np.nanmax(arr) <= 1.0 else 1.0  # float images in [0, 1]
        img = Image.fromarray(np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    try:
        return img.convert("L" if channels == 1 else "RGB")
    except (ValueError, OSError):
        raise Rejected(f"unsupported mode: {img.mode}") from None


def to_array(img: Image.Image, resolution: int, channels: int) -> np.ndarray:
    w, h = img.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    if nw * nh > _CROP_FIRST_ABOVE * resolution * resolution:
        img = _crop_then_resize(img, (nw, nh), (left, top), resolution, channels)
    else:
        img = _to_mode(img, channels)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
        img = img.crop((left, top, left + resolution, top + resolution))
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def _crop_then_resize(
    img: Image.Image, size: tuple[int, int], at: tuple[int, int], resolution: int, channels: int
) -> Image.Image:
    """Resize to `size` then crop at `at`, without the resized image: the source region under the
    crop (plus the bicubic filter's reach) is cut out, converted, then resampled."""
    (w, h), (nw, nh), (left, top) = img.size, size, at
    sx, sy = w / nw, h / nh  # source pixels per output pixel
    box = (left * sx, top * sy, (left + resolution) * sx, (top + resolution) * sy)
    mx, my = 2 * max(sx, 1.0) + 1, 2 * max(sy, 1.0) + 1  # bicubic support (2 output px) + rounding
    x0, y0 = max(0, math.floor(box[0] - mx)), max(0, math.floor(box[1] - my))
    x1, y1 = min(w, math.ceil(box[2] + mx)), min(h, math.ceil(box[3] + my))
    part = _to_mode(img.crop((x0, y0, x1, y1)), channels)
    inner = (box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0)
    return part.resize((resolution, resolution), Image.Resampling.BICUBIC, box=inner, reducing_gap=None)


def _damage(e: BaseException) -> str:
    return "truncated" if "truncated" in str(e).lower() or isinstance(e, EOFError) else "corrupt"


def _check_file(source: Source, key: Any) -> None:
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


def _open(source: Source, key: Any) -> Image.Image:
    try:
        with warnings.catch_warnings(action="ignore", category=Image.DecompressionBombWarning):
            return source.open(key)
    except UnidentifiedImageError:
        raise Rejected(f"not an image: none of {', '.join(RASTER_FORMATS)}") from None
    except Image.DecompressionBombError as e:
        raise Rejected(f"decompression bomb: {e}") from None
    except PermissionError as e:
        raise Rejected(f"unreadable: {e.strerror}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # SyntaxError: PIL's bad-header error
        raise Rejected(f"{_damage(e)}: {e}") from None


def decode(source: Source, key: Any, cfg: DataConfig) -> np.ndarray:
    _check_file(source, key)
    with _open(source, key) as img:
        w, h = img.size
        if img.format is not None and img.format not in OPENED_AS:  # a source's own opener
            raise Rejected(f"not an image: {img.format} is not one of {', '.join(RASTER_FORMATS)}")
        if w * h > cfg.max_pixels:
            raise Rejected(f"decompression bomb: {w}x{h} pixels > data.max_pixels={cfg.max_pixels}")
        if min(w, h) < cfg.min_size:
            raise Rejected(f"too small: {w}x{h} < data.min_size={cfg.min_size}")
        if img.format == "JPEG":
            # libjpeg decodes at a reduced scale: the full-size pixels never exist in memory
            s = cfg.resolution / min(w, h)
            img.draft(img.mode, (max(1, int(w * s)), max(1, int(h * s))))
        try:
            try:
                img.load()
            except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
                raise Rejected(f"{_damage(e)}: {e}") from None
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - a decoder failing on hostile bytes is one bad file
                raise Rejected(f"corrupt: decoder failed ({type(e).__name__}: {e})") from None
            try:
                img = ImageOps.exif_transpose(img)
            except MemoryError:
                raise
            except Exception as e:  # noqa: BLE001 - a malformed EXIF block must not be fatal
                raise Rejected(f"corrupt: bad EXIF data ({e})") from None
            return to_array(img, cfg.resolution, cfg.channels)
        except MemoryError:
            raise Rejected(f"decompression bomb: out of memory decoding {w}x{h} pixels") from None


_worker: tuple[Source, DataConfig] | None = None


def _init_worker(source: Source, cfg: DataConfig) -> None:
    global _worker
    _worker = (source, cfg)
    Image.MAX_IMAGE_PIXELS = None  # the data.max_pixels check replaces PIL's global limit


def _decode_chunk(keys: list[Any]) -> tuple[np.ndarray, list[str | None]]:
    assert _worker is not None
    source, cfg = _worker
    out = np.empty((len(keys), cfg.channels, cfg.resolution, cfg.resolution), dtype=np.uint8)
    reasons: list[str | None] = []
    n = 0
    for key in marked(keys):
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
    """Decoded chunks, (valid images, one reason or None per key), in `source.read_order`."""
    order = source.read_order if source.read_order is not None else range(len(source.items))
    starts = [0]  # where each chunk starts in read order (a chunk may close early, at CHUNK_BYTES)

    def chunks() -> Iterator[list]:
        for batch in source.payloads(chunk, cfg.max_pixels):
            starts.append(starts[-1] + len(batch))
            yield batch

    def name(seq: int, i: int) -> str:
        return str(source.items[order[starts[seq] + i]][0])

    yield from in_order(_decode_chunk, chunks(), workers, name, _init_worker, (source, cfg))


def read_rgb(path: Path) -> np.ndarray:
    """An image file as pytorch-fid's ImagePathDataset reads it (RGB, H x W x 3 uint8)."""
    try:
        with open_image(path) as img:
            return np.asarray(img.convert("RGB")).copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ConfigError(f"{path}: not a readable image ({type(e).__name__})") from None


def _read_rgb_chunk(paths: list[Path]) -> list[np.ndarray]:
    return [read_rgb(f) for f in marked(paths)]


def read_rgb_chunks(chunks: list[list[Path]], workers: int) -> Iterator[list[np.ndarray]]:
    """Each chunk of image files `read_rgb`, in order, decoded ahead of the caller (the Inception pass)."""
    yield from in_order(_read_rgb_chunk, chunks, min(workers, len(chunks)), lambda s, i: str(chunks[s][i]))
