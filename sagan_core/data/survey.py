"""A look at a sample of a source's images (sizes, channels, classes) for `sagan init --data`: read
as prepare reads them (sources.py, archives.py, formats.open_image), headers only, at most `limit`
images spread evenly over the sorted items so that every class has a chance to be seen."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sagan_core.data.archives import BadMember, read_members
from sagan_core.data.formats import open_image
from sagan_core.data.sources import Source, open_source

SAMPLE = 64
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


@dataclass(frozen=True)
class Look:
    num_images: int
    num_classes: int
    sizes: list[tuple[int, int]]
    gray: list[bool]
    unreadable: int


def look(spec: str, limit: int = SAMPLE, max_pixels: int = 50_000_000) -> Look:
    """Raises what listing raises (an unsafe folder or archive), never for one bad file."""
    source = open_source(spec)
    step = max(1, len(source.items) / limit) if source.items else 1
    picked = sorted({int(i * step) for i in range(min(limit, len(source.items)))})
    seen = [h for p in _payloads(source, picked, max_pixels) if (h := _header(source, p)) is not None]
    sizes, gray = [size for size, _ in seen], [g for _, g in seen]
    return Look(len(source.items), len(source.class_names), sizes, gray, len(picked) - len(sizes))


def _payloads(source: Source, picked: list[int], max_pixels: int) -> list[Any]:
    if source.archive is None:
        return [source.items[i][0] for i in picked] if source.root is not None else []
    rank = {pos: r for r, pos in enumerate(source.read_order or range(len(source.items)))}
    in_order = sorted(picked, key=rank.__getitem__)  # read_members reads front to back, once
    names = [source.members[source.items[i][0]] for i in in_order]
    return list(read_members(source.archive, names, max_pixels, source.links))


def _header(source: Source, payload: Any) -> tuple[tuple[int, int], bool] | None:
    """(size, grayscale) from the image's header; None when it does not open."""
    if isinstance(payload, BadMember):
        return None
    try:
        fp = io.BytesIO(payload) if source.archive is not None else Path(source.root or ".") / payload
        with open_image(fp) as img:
            return img.size, _is_gray(img)
    except Exception:  # noqa: BLE001 - any file that does not open is one unreadable image here
        return None


def _is_gray(img: Any) -> bool:
    if img.mode in GRAY_MODES:
        return True
    if img.mode == "P":  # a palette of grays (GIF, 8-bit PNG): gray
        pal = img.getpalette() or []
        return all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))
    return False
