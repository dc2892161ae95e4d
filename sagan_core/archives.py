"""Image archives (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz, .zip), read safely and never extracted.

Every member is checked before anything is read: absolute paths, `..`, links pointing outside the
archive and device files/FIFOs refuse the whole archive. Members are then read front to back in one
decompression pass and handed over as bytes (sagan_core.sources decodes them from memory).
"""

from __future__ import annotations

import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from .errors import SaganError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".zip")


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


def read_members(archive: Path, names: list[str]) -> Iterator[bytes]:
    """The bytes of `names` (given in archive order), reading the archive front to back once."""
    if archive.name.lower().endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for n in names:
                yield zf.read(n)
        return
    wanted = set(names)
    with tarfile.open(archive) as tf:
        # Iterating the TarFile reads headers lazily, front to back (extractfile(name) would do a
        # linear member search per call: quadratic on 60k files).
        for m in tf:
            if m.name in wanted:
                f = tf.extractfile(m)  # links inside the archive resolve to their target's data
                yield f.read() if f is not None else b""
