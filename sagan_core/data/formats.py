"""What counts as an image, and the one way an untrusted one is opened: Pillow picks a decoder by
the bytes (a `.png` holding EPS would run Ghostscript), so only RASTER_FORMATS are ever asked."""

from __future__ import annotations

from typing import Any

from PIL import Image

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
# The Pillow formats of those extensions (.pgm is PPM).
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# What an image opened so may report: the JPEG plugin calls a camera's multi-picture JPEG "MPO".
OPENED_AS = {*RASTER_FORMATS, "MPO"}


def open_image(fp: Any) -> Image.Image:
    return Image.open(fp, formats=RASTER_FORMATS)


def known_header(head: bytes) -> bool:
    """Whether `head` starts with the signature of one of RASTER_FORMATS (Pillow's own tests)."""
    Image.init()
    for fmt in RASTER_FORMATS:
        _, accept = Image.OPEN.get(fmt, (None, None))
        try:
            if accept is not None and accept(head[:16]):
                return True
        except Exception:  # noqa: BLE001, S112 - a plugin's test failing on odd bytes is a no
            continue
    return False
