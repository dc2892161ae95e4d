"""Image archives (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz, .zip), read safely and never extracted:
absolute paths, `..`, links leaving the archive, device files/FIFOs and zip members sharing bytes
refuse the whole archive; members are read front to back in one pass, as bytes or a `BadMember`
(unreadable, corrupt, or a decompression bomb by declared size or header pixels: never read).
A tar link shares its target's kept payload (tarfile would rewind: quadratic in a .tar.gz)."""

from __future__ import annotations

import io
import posixpath
import shutil
import stat
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any

from PIL import Image

from sagan_core.data.formats import known_header, open_image
from sagan_core.errors import SaganError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")
# A member may declare at most BYTES_PER_PIXEL per allowed pixel (16-bit RGBA is 8, ASCII PPM ~12)
# plus HEADROOM (EXIF, ICC, XMP, thumbnails); more cannot be a usable image and is never read.
BYTES_PER_PIXEL, HEADROOM = 16, 16 << 20
HEADER_PEEK = 1 << 20  # larger members have their image header checked on this prefix first
CHUNK_BYTES = 64 << 20  # the bytes of one batch handed to the decoders
LINKED_BYTES = 256 << 20  # the bytes of link targets kept for links still to come


@dataclass(frozen=True)
class BadMember:
    reason: str


_MISSING = BadMember("unreadable: link to a missing member")


def is_archive(path: Path) -> bool:
    return path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts or (p.parts and ":" in p.parts[0]):
        raise SaganError(
            f"{archive}: refused: member {name!r} would be written outside the extraction folder"
        )
    return p


def _check_tar(members: list[tarfile.TarInfo], archive: Path) -> dict[str, str | BadMember]:
    """Each link's name -> the regular file its chain ends at, or why not. Names match as tarfile
    matches them: normalized, the last of that name, a hard link's among the members before it."""
    seen: dict[str, int] = {}
    step: dict[int, int | None] = {}  # link position -> the position of the member it names
    for i, m in enumerate(members):
        p = _safe_name(m.name, archive)
        if m.issym() or m.islnk():
            # Symlinks are resolved from the link's folder, hard links from the root.
            base = p.parent if m.issym() else PurePosixPath()
            target = PurePosixPath(m.linkname.replace("\\", "/"))
            if target.is_absolute() or posixpath.normpath(base / target).split("/")[0] == "..":
                raise SaganError(f"{archive}: refused: link {m.name!r} -> {m.linkname!r} leaves the archive")
        elif not (m.isfile() or m.isdir()):
            raise SaganError(f"{archive}: refused: member {m.name!r} is a device file or FIFO")
        if m.islnk():
            step[i] = seen.get(posixpath.normpath(m.linkname))
        seen[posixpath.normpath(m.name)] = i
    for i, m in enumerate(members):
        if m.issym():
            named = "/".join(filter(None, (posixpath.dirname(m.name), m.linkname)))
            step[i] = seen.get(posixpath.normpath(named))
    end: dict[int, int | BadMember] = {}  # link position -> where its chain ends (each followed once)
    for start in step:
        chain: dict[int, None] = {}
        j: int | None = start
        while j is not None and j in step and j not in end and j not in chain:
            chain[j] = None
            j = step[j]
        loop = BadMember("unreadable: link loop")
        found = _MISSING if j is None else end.get(j, loop if j in chain else j)
        end.update(dict.fromkeys(chain, found))
    links: dict[str, str | BadMember] = {}
    for i, found in end.items():
        if isinstance(found, int):
            why = "a directory" if members[found].isdir() else "a member later in the archive" * (found > i)
            found = BadMember(f"unreadable: link to {why}") if why else members[found].name
        links[members[i].name] = found
    return links


# A local file header: signature, (version), flags, (method, time, date, CRC, sizes), name/extra lengths.
_LOCAL_HEADER = struct.Struct("<4s2xH18xHH")


def _check_zip(zf: zipfile.ZipFile, archive: Path) -> None:
    """Refuse links, special files, and members sharing bytes (one deflate stream read as many: a 790 KB
    zip held 20 of 797 MB): CPython 3.11.8's check (CVE-2024-0450), which 3.11.7 lacks. Each span (local
    header to end of data) ends where the next begins, its local header naming its member."""
    spans: list[tuple[int, int, str]] = []
    with open(archive, "rb") as f:
        for info in zf.infolist():
            _safe_name(info.filename, archive)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no file type
            if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
                raise SaganError(f"{archive}: refused: member {info.filename!r} is a link or special file")
            f.seek(info.header_offset)
            head = f.read(_LOCAL_HEADER.size)
            if len(head) < _LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
                continue
            _, flags, name_len, extra_len = _LOCAL_HEADER.unpack(head)
            name = f.read(name_len).decode("utf-8" if flags & 0x800 else "cp437", errors="replace")
            if name != info.orig_filename:
                raise SaganError(
                    f"{archive}: refused: member {info.filename!r}'s local header names {name!r} "
                    "(its entry points at another member's header: a zip bomb)"
                )
            data_at = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
            spans.append((info.header_offset, data_at + info.compress_size, info.filename))
    spans.sort()
    # start_dir: where zipfile found the central directory (after any bytes prepended to the zip).
    nexts = [*((at, repr(name)) for at, _, name in spans[1:]), (zf.start_dir, "the central directory")]
    over = [(span, nxt) for span, nxt in zip(spans, nexts, strict=True) if span[1] > nxt[0]]
    if over:
        (start, end, name), (at, what) = over[0]
        raise SaganError(
            f"{archive}: refused: member {name!r} (bytes {start}-{end}) overlaps {what} (from byte "
            f"{at}); {len(over)} members overlap the next: their data would be read more than once "
            "(a zip bomb)"
        )


def checked_members(archive: Path) -> tuple[list[str], dict[str, str | BadMember]]:
    """The archive's files and links in archive order, every member checked; where each link leads."""
    links: dict[str, str | BadMember] = {}
    try:
        if archive.name.lower().endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                _check_zip(zf, archive)
                order = [i.filename for i in zf.infolist() if not i.is_dir()]
        else:
            with tarfile.open(archive) as tf:
                links = _check_tar(tf.getmembers(), archive)
                order = [m.name for m in tf.getmembers() if m.isfile() or m.issym() or m.islnk()]
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as e:
        raise SaganError(f"{archive}: cannot read archive ({type(e).__name__}: {e})") from None
    if dupes := [n for n, k in Counter(order).items() if k > 1]:
        raise SaganError(f"{archive}: refused: member {dupes[0]!r} appears more than once (ambiguous)")
    return order, links


def batches(payloads: Iterable[Any], chunk: int) -> Iterator[list[Any]]:
    """Lists of at most `chunk` payloads and CHUNK_BYTES of bytes (or one larger member)."""
    batch: list[Any] = []
    size = 0
    for data in payloads:
        n = len(data) if isinstance(data, bytes) else 0
        if batch and (size + n > CHUNK_BYTES or len(batch) == chunk):
            yield batch
            batch, size = [], 0
        batch.append(data)
        size += n
    if batch:
        yield batch


def read_members(
    archive: Path, names: list[str], max_pixels: int, links: dict[str, str | BadMember]
) -> Iterator[bytes | BadMember]:
    """One payload per name (in archive order): the bytes, or a BadMember; one pass front to back."""
    done = 0
    try:
        read = _zip_payloads if archive.name.lower().endswith(".zip") else partial(_tar_payloads, links=links)
        for payload in read(archive, names, max_pixels):
            done += 1
            yield payload
        reason = "unreadable: member not found when the archive was read"
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
        # The stream broke after the listing: each member after the break is one rejection.
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


def _tar_payloads(
    archive: Path, names: list[str], max_pixels: int, links: dict[str, str | BadMember]
) -> Iterator[bytes | BadMember]:
    """A link gets its target's payload, kept (within LINKED_BYTES) until its last link is handed over."""
    wanted = set(names)
    uses = Counter(t for n in names if isinstance(t := links.get(n), str))
    kept: dict[str, bytes | BadMember] = {}
    room = LINKED_BYTES
    with tarfile.open(archive) as tf:
        # Iterating reads headers lazily (extractfile(name) searches linearly: quadratic on 60k files).
        for m in tf:
            if m.name not in wanted and m.name not in uses:
                continue
            if m.name in links:  # wanted: a link only leads to a regular file read before it
                target = links[m.name]
                if isinstance(target, str):
                    uses[target] -= 1
                    shared = kept.get(target, _MISSING) if uses[target] else kept.pop(target, _MISSING)
                    room += len(shared) if not uses[target] and isinstance(shared, bytes) else 0
                    target = shared
                yield target
                continue
            payload = _read_member(partial(tf.extractfile, m), m.size, max_pixels)
            if m.name in uses:
                n = len(payload) if isinstance(payload, bytes) else 0
                if n > room:
                    reason = f"unreadable: link to a member too large to keep in memory ({n} bytes)"
                    kept[m.name] = BadMember(reason)
                else:
                    kept[m.name], room = payload, room - n
            if m.name in wanted:
                yield payload


def _read_member(
    open_member: Callable[[], IO[bytes] | None], size: int, max_pixels: int
) -> bytes | BadMember:
    limit = BYTES_PER_PIXEL * max_pixels + HEADROOM
    if size > limit:
        return BadMember(
            f"decompression bomb: member declares {size} bytes > {limit} (data.max_pixels={max_pixels})"
        )
    try:
        f = open_member()
        if f is None:  # not a regular file (the listing hands over only files and links)
            return BadMember("unreadable: not a regular file")
        with f:
            if size <= HEADER_PEEK:
                return f.read()
            head = f.read(HEADER_PEEK)
            if why := _header_verdict(head, size, max_pixels):
                return BadMember(why)
            buf = io.BytesIO()  # one copy of the member at its peak (`head + f.read()` held three)
            buf.write(head)
            shutil.copyfileobj(f, buf)
            return buf.getvalue()
    # An error reading one member is its rejection; other kinds are not its own and stay fatal.
    except KeyError:  # tarfile: a link whose target is not an earlier member
        return _MISSING
    except RuntimeError as e:  # zipfile: encrypted, unknown compression (NotImplementedError)
        return BadMember(f"unreadable: {e}")
    except zipfile.BadZipFile as e:
        return BadMember("corrupt: bad CRC" if "CRC" in str(e) else f"corrupt: {e}")
    except (EOFError, zlib.error, tarfile.TarError, OSError) as e:
        if isinstance(e, EOFError) or (isinstance(e, tarfile.ReadError) and "end of data" in str(e)):
            return BadMember(f"truncated: {str(e) or 'compressed data ends early'}")
        return BadMember(f"corrupt: {type(e).__name__}: {e}")


def _header_verdict(head: bytes, size: int, max_pixels: int) -> str | None:
    """Why a member starting with `head` is not read further; None: read it (the decoder decides)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check size ourselves
            with open_image(io.BytesIO(head)) as img:
                w, h = img.size
    except Image.DecompressionBombError as e:
        # PIL's own limit (2 x Image.MAX_IMAGE_PIXELS) was passed: a bomb unless ours is higher.
        limit = Image.MAX_IMAGE_PIXELS
        return f"decompression bomb: {e}" if limit and max_pixels < 2 * limit else None
    except Exception:  # noqa: BLE001 - not identified from the prefix: does any format claim it?
        if known_header(head):
            return None
        return f"not an image: no known image header in the first {HEADER_PEEK >> 20} MiB of {size} bytes"
    if w * h > max_pixels:
        return f"decompression bomb: {w}x{h} pixels > data.max_pixels={max_pixels}"
    if size > (need := BYTES_PER_PIXEL * w * h + HEADROOM):
        # A 64x64 PNG then 760 MiB of zeros (only the first frame of an animation is decoded).
        return f"decompression bomb: member declares {size} bytes > {need}, the most a {w}x{h} image needs"
    return None
