"""A look at a sample of a source's images (sizes, channels, classes) for `sagan init --data`: read
as prepare reads them (sources.py, archives.py, formats.open_image), headers only, at most SAMPLE
images spread evenly over the sorted items so that every class has a chance to be seen."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import ImageMode

from sagan_core.data.archives import BadMember, read_members
from sagan_core.data.formats import open_image
from sagan_core.data.sources import open_source

SAMPLE = 64
MAX_PIXELS = 50_000_000  # prepare's default: a larger member is not read


@dataclass(frozen=True)
class Look:
    num_images: int
    num_classes: int
    sizes: list[tuple[int, int]]
    gray: list[bool]
    unreadable: int


def look(spec: str) -> Look:
    """Raises what listing raises (an unsafe folder or archive), never for one bad file."""
    source = open_source(spec)
    step = max(1, len(source.items) / SAMPLE)
    picked = sorted({int(i * step) for i in range(min(SAMPLE, len(source.items)))})
    payloads: list[Any] = []
    if source.archive is not None:
        rank = {pos: r for r, pos in enumerate(source.read_order or range(len(source.items)))}
        names = [source.members[source.items[i][0]] for i in sorted(picked, key=rank.__getitem__)]
        payloads = list(read_members(source.archive, names, MAX_PIXELS, source.links))  # front to back
    elif source.root is not None:
        payloads = [source.root / source.items[i][0] for i in picked]
    seen = [h for p in payloads if (h := _header(p)) is not None]
    sizes, gray = [size for size, _ in seen], [g for _, g in seen]
    return Look(len(source.items), len(source.class_names), sizes, gray, len(picked) - len(sizes))


def _header(payload: Any) -> tuple[tuple[int, int], bool] | None:
    """(size, grayscale) from the image's header; None when it does not open."""
    if isinstance(payload, BadMember):
        return None
    try:
        with open_image(io.BytesIO(payload) if isinstance(payload, bytes) else payload) as img:
            if img.mode == "P":  # a palette of grays (GIF, 8-bit PNG): gray
                pal = img.getpalette() or []
                return img.size, all(pal[i] == pal[i + 1] == pal[i + 2] for i in range(0, len(pal) - 2, 3))
            return img.size, ImageMode.getmode(img.mode).basemode == "L"  # 1, L, LA, I, I;16, F
    except Exception:  # noqa: BLE001 - any file that does not open is one unreadable image here
        return None
