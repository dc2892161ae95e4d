"""Image archives (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz, .zip), read safely and never extracted.

Every member is checked before anything is read: absolute paths, `..`, links pointing outside the
archive and device files/FIFOs refuse the whole archive. Members are then read front to back in one
decompression pass and handed over as bytes (sagan_core.sources decodes them from memory).

One bad member is one rejected file, never a failed archive: a member that cannot be read (a link
to a missing member, a bad CRC, an encrypted zip member, damaged compressed data) is handed over as
a `BadMember` carrying the manifest's rejection reason instead of bytes. Memory stays bounded: a
member whose declared size exceeds `max_member_bytes(data.max_pixels)`, or whose image header
declares more than `data.max_pixels` pixels, is rejected as a decompression bomb before it is read.
"""

from __future__ import annotations

import io
import stat
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO

from PIL import Image

from sagan_core.errors import SaganError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
# A member may need at most BYTES_PER_PIXEL bytes per allowed pixel plus HEADROOM: 16 is generous
# (uncompressed 16-bit RGBA is 8, ASCII PPM about 12) and the headroom covers EXIF, ICC profiles,
# XMP and thumbnails. Anything declaring more cannot be a usable image: it is never read.
BYTES_PER_PIXEL = 16
HEADROOM = 16 << 20
# Members larger than this have their image header checked on a prefix of this many bytes before
# the rest is read; smaller ones are read whole (the decoder checks the same header before decoding).
HEADER_PEEK = 1 << 20


@dataclass(frozen=True)
class BadMember:
    """A member handed over instead of its bytes: `reason` is the manifest's rejection reason."""

    reason: str


def max_member_bytes(max_pixels: int) -> int:
    """The largest declared member size read for `data.max_pixels` (see BYTES_PER_PIXEL)."""
    return BYTES_PER_PIXEL * max_pixels + HEADROOM


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise SaganError(
            f"{archive}: refused: member {name!r} would be written outside the extraction folder"
        )
    return p


def _check_tar(tf: tarfile.TarFile, archive: Path) -> None:
    for m in tf.getmembers():
        p = _safe_name(m.name, archive)
        if m.issym() or m.islnk():
            # Link targets are resolved from the link's folder (symlinks) or the root (hard links).
            base = p.parent if m.issym() else PurePosixPath()
            target = PurePosixPath(m.linkname.replace("\\", "/"))
            parts = (base / target).parts
            depth = 0
            for part in parts:
                depth += -1 if part == ".." else (0 if part == "." else 1)
                if depth < 0:
                    break
            if target.is_absolute() or depth < 0:
                raise SaganError(f"{archive}: refused: link {m.name!r} -> {m.linkname!r} leaves the archive")
        elif not (m.isfile() or m.isdir()):
            raise SaganError(f"{archive}: refused: member {m.name!r} is a device file or FIFO")


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> None:
    for info in zf.infolist():
        _safe_name(info.filename, archive)
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no file type
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise SaganError(f"{archive}: refused: member {info.filename!r} is a link or special file")


def checked_members(archive: Path) -> list[str]:
    """The names of the archive's files (and links), in archive order, after checking every member."""
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, archive)
                order = [i.filename for i in zf.infolist() if not i.is_dir()]
        else:
            with tarfile.open(archive) as tf:
                _check_tar(tf, archive)
                order = [m.name for m in tf.getmembers() if m.isfile() or m.issym() or m.islnk()]
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise SaganError(f"{archive}: cannot read archive ({type(e).__name__}: {e})") from None
    if len(set(order)) != len(order):
        dup = next(n for n in order if order.count(n) > 1)
        raise SaganError(f"{archive}: refused: member {dup!r} appears more than once (ambiguous)")
    return order


def read_members(archive: Path, names: list[str], max_pixels: int) -> Iterator[bytes | BadMember]:
    """One payload per name of `names` (given in archive order), in that order, reading the archive
    front to back once: the member's bytes, or a BadMember saying why it was not read."""
    is_zip = archive.name.lower().endswith(".zip")
    done = 0
    try:
        for payload in (_zip_payloads if is_zip else _tar_payloads)(archive, names, max_pixels):
            done += 1
            yield payload
        reason = "unreadable: member not found when the archive was read"
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        # The archive's stream itself broke after it was listed: what was read is kept, the members
        # after the break are lost (one rejection each), and max_rejected_fraction decides.
        reason = f"unreadable: archive stream broken before this member ({type(e).__name__}: {e})"
    for _ in names[done:]:
        yield BadMember(reason)


def _zip_payloads(archive: Path, names: list[str], max_pixels: int) -> Iterator[bytes | BadMember]:
    with zipfile.ZipFile(archive) as zf:
        for n in names:
            info = zf.getinfo(n)
            if info.flag_bits & 0x1:  # zipfile would raise RuntimeError: there is no password to give
                yield BadMember("unreadable: encrypted zip member")
            else:
                yield _read_member(partial(zf.open, info), info.file_size, max_pixels)


def _tar_payloads(archive: Path, names: list[str], max_pixels: int) -> Iterator[bytes | BadMember]:
    wanted = set(names)
    with tarfile.open(archive) as tf:
        # Iterating the TarFile reads headers lazily, front to back (extractfile(name) would do a
        # linear member search per call: quadratic on 60k files).
        for m in tf:
            if m.name in wanted:
                # Links resolve to their target's data; its size is known once opened.
                size = m.size if m.isfile() else None
                yield _read_member(partial(tf.extractfile, m), size, max_pixels)


def _read_member(
    open_member: Callable[[], IO[bytes] | None], size: int | None, max_pixels: int
) -> bytes | BadMember:
    """The member's bytes, or why not; `size` is the declared size (None: ask the opened file)."""
    limit = max_member_bytes(max_pixels)
    try:
        f = open_member()
        if f is None:  # a tar link to a directory: decoded as an empty file
            return b""
        with f:
            if size is None:  # seeking a tar member only moves a position: nothing is read
                size = f.seek(0, io.SEEK_END)
                f.seek(0)
            if size > limit:
                return BadMember(
                    f"decompression bomb: member declares {size} bytes > {limit} "
                    f"(data.max_pixels={max_pixels})"
                )
            if size <= HEADER_PEEK:
                return f.read()
            head = f.read(HEADER_PEEK)
            bomb = _header_bomb(head, max_pixels)
            return BadMember(bomb) if bomb else head + f.read()
    except Exception as e:  # noqa: BLE001 - mapped to a reason; unknown kinds stay fatal below
        reason = _read_error(e)
        if reason is None:
            raise
        return BadMember(reason)


def _read_error(e: Exception) -> str | None:
    """The rejection reason for an error reading one member; None for errors that are not its own."""
    if isinstance(e, KeyError):  # tarfile: a link whose target is not an earlier member
        return "unreadable: link to a missing member"
    if isinstance(e, RuntimeError):  # zipfile: encrypted (flagged in the local header only)
        return f"unreadable: {e}"
    if isinstance(e, NotImplementedError):  # zipfile: a compression method Python cannot read
        return f"unreadable: {e}"
    if isinstance(e, zipfile.BadZipFile):
        return "corrupt: bad CRC" if "CRC" in str(e) else f"corrupt: {e}"
    if isinstance(e, EOFError) or (isinstance(e, tarfile.ReadError) and "end of data" in str(e)):
        return f"truncated: {str(e) or 'compressed data ends early'}"
    if isinstance(e, (zlib.error, tarfile.TarError, OSError)):
        return f"corrupt: {type(e).__name__}: {e}"
    return None


def _header_bomb(head: bytes, max_pixels: int) -> str | None:
    """'decompression bomb: ...' when the image header in `head` declares too many pixels; None
    when it does not, or when the prefix does not identify an image (the decoder decides later)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check size ourselves
            with Image.open(io.BytesIO(head)) as img:
                w, h = img.size
    except Image.DecompressionBombError as e:
        # PIL's own limit (2 x Image.MAX_IMAGE_PIXELS) was passed: a bomb unless ours is higher.
        limit = Image.MAX_IMAGE_PIXELS
        return f"decompression bomb: {e}" if limit and max_pixels < 2 * limit else None
    except Exception:  # noqa: BLE001 - a prefix may cut any header short: not a verdict
        return None
    if w * h > max_pixels:
        return f"decompression bomb: {w}x{h} pixels > data.max_pixels={max_pixels}"
    return None
