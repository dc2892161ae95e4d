"""Hostile or broken archive members (dangling symlinks, bad CRCs, encryption, decompression bombs,
pixel bombs): each is one rejected file, never a crash of `sagan prepare`.

Each case builds an archive of good images plus one broken member, runs `sagan prepare` as a user
would, and checks that the good images are prepared and the bad member is listed with its reason.
A member declaring a huge size, or more bytes than its image header's pixels can need, is rejected
without being read: memory stays bounded; zip members sharing bytes (one deflate stream read as
many members) refuse the archive. Archives that amplify cost bounded memory and time too: a tar
link is resolved from the listing to a member already read (its payload shared, never read twice,
the archive never rewound), a link to a later member is one rejected file, a large member whose
first bytes are no known image header is rejected from them, a batch handed to the decoders holds
at most `archives.CHUNK_BYTES`, and the listing's duplicate check is linear.

Longer than 300 lines: every hostile-archive case in one place, sharing the archive builders and the
child-process memory probe (VmHWM) rather than copying them into a second module.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest
from helpers import REPO, cli
from PIL import Image

from sagan_core.data import archives
from sagan_core.data.sources import archive_source
from sagan_core.errors import SaganError

pytestmark = pytest.mark.e2e

GOOD = [f"{c}/img_{i}.png" for c in ("cat", "dog") for i in range(3)]


def png(i: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 36), (30 * i, 100, 200 - 20 * i)).save(buf, "PNG")
    return buf.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A real PNG signature + IHDR claiming width x height (then a tiny IDAT and IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def write_zip(path: Path, bad_name: str, bad_data: bytes) -> Path:
    """Good images around the bad member (stored, so its bytes can be altered in place)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i, name in enumerate(GOOD[:3]):
            zf.writestr(name, png(i))
        zf.writestr(bad_name, bad_data)
        for i, name in enumerate(GOOD[3:], start=3):
            zf.writestr(name, png(i))
    return path


def prepare_cli(project: Path, source: str, *extra: str) -> dict:
    """`sagan prepare` on `source`: exit 0, no traceback, every good image kept; the manifest."""
    (project / "params.yaml").write_text(f"data: {{source: {source}, max_rejected_fraction: 0.5}}\n")
    r = cli(["prepare", "--quiet", *extra], cwd=project)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    manifest = json.loads((project / "data/prepared/manifest.json").read_text())
    assert manifest["num_images"] == len(GOOD) and manifest["class_counts"] == [3, 3]
    return manifest


def zip_to_damage(tmp_path: Path, name: str, data: bytes) -> tuple[Path, bytearray, zipfile.ZipInfo]:
    """The good images plus `name` as ds.zip: its path, its bytes (to damage) and that member's info."""
    z = write_zip(tmp_path / "ds.zip", name, data)
    with zipfile.ZipFile(z) as zf:
        return z, bytearray(z.read_bytes()), zf.getinfo(name)


@pytest.mark.unit
def test_tar_symlink_to_a_missing_member_is_one_rejected_file(tmp_path):
    tar = tmp_path / "ds.tar"
    with tarfile.open(tar, "w") as tf:
        for i, name in enumerate(GOOD):
            info = tarfile.TarInfo(name)
            info.size = len(data := png(i))
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("cat/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "gone.png"  # inside the archive, but absent
        tf.addfile(link)
    m = prepare_cli(tmp_path, "ds.tar")
    assert m["rejected"] == [{"file": "cat/link.png", "reason": "unreadable: link to a missing member"}]


@pytest.mark.unit
def test_zip_member_with_a_bad_crc_is_one_rejected_file(tmp_path):
    z, raw, info = zip_to_damage(tmp_path, "dog/bad.png", png(7))
    # Stored data follows the 30-byte local header, the name and the extra field.
    data_at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_at + 40] ^= 0xFF
    z.write_bytes(bytes(raw))
    m = prepare_cli(tmp_path, "ds.zip")
    assert m["rejected"] == [{"file": "dog/bad.png", "reason": "corrupt: bad CRC"}]


@pytest.mark.unit
def test_encrypted_zip_member_is_one_rejected_file(tmp_path):
    z, raw, info = zip_to_damage(tmp_path, "cat/secret.png", png(8))
    name = info.filename.encode()
    raw[info.header_offset + 6] |= 0x01  # general-purpose flag bit 0 (local header): encrypted
    central = raw.index(b"PK\x01\x02")
    while raw[central + 46 : central + 46 + len(name)] != name:  # this member's central entry
        central = raw.index(b"PK\x01\x02", central + 4)
    raw[central + 8] |= 0x01  # the same flag in the central directory
    z.write_bytes(bytes(raw))
    with zipfile.ZipFile(z) as zf:
        assert zf.getinfo("cat/secret.png").flag_bits & 0x1  # really marked encrypted
    m = prepare_cli(tmp_path, "ds.zip")
    assert m["rejected"] == [{"file": "cat/secret.png", "reason": "unreadable: encrypted zip member"}]


def bomb_zip(path: Path, declared: int, head: bytes = b"") -> Path:
    """A small zip whose .png member is `head` then zeros, `declared` bytes in all (written streaming)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, name in enumerate(GOOD):
            zf.writestr(name, png(i))
        with zf.open("dog/bomb.png", "w", force_zip64=True) as f:
            f.write(head)
            block = bytes(1 << 20)
            for _ in range((declared - len(head)) >> 20):
                f.write(block)
    return path


def peak_rss_growth_mb(archive: Path, prepared: Path, max_pixels: int) -> float:
    """Prepare `archive` (one member rejected) in a fresh process; how much its peak RSS grew (MB)."""
    return prepare_in_child(archive, prepared, max_pixels)[0]


def prepare_in_child(
    archive: Path, prepared: Path, max_pixels: int, rejected: int = 1
) -> tuple[float, float]:
    """Prepare `archive` in a fresh process, expecting every good image kept and `rejected` members
    rejected; (how much its peak RSS grew while doing so in MB, the seconds prepare took).

    VmHWM (Linux), not ru_maxrss: a child's ru_maxrss starts at its parent's peak (pytest's, with
    torch imported), which would hide any growth below it."""
    script = f"""
from sagan_core.config import DataConfig
from sagan_core.data.prepare import prepare
def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
import time
cfg = DataConfig(source={str(archive)!r}, prepared_dir={str(prepared)!r}, max_pixels={max_pixels},
                 max_rejected_fraction=0.99, workers=1)
before, t0 = peak_kb(), time.perf_counter()
m = prepare(cfg, progress=False)
assert (m["num_images"], m["num_rejected"]) == ({len(GOOD)}, {rejected}), m
print((peak_kb() - before) / 1024, time.perf_counter() - t0)
"""
    env = {"PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    grew, seconds = map(float, r.stdout.split())
    return grew, seconds


needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="VmHWM is Linux-only")


@needs_proc
def test_member_declaring_a_huge_size_is_a_bomb_rejected_without_being_read(tmp_path):
    z = bomb_zip(tmp_path / "ds.zip", 200 << 20)
    assert z.stat().st_size < 1 << 20
    m = prepare_cli(tmp_path, "ds.zip", "--set", "data.max_pixels=1000000")
    [entry] = m["rejected"]
    assert entry["file"] == "dog/bomb.png"
    assert entry["reason"].startswith("decompression bomb: member declares 209715200 bytes > ")
    grew = peak_rss_growth_mb(z, tmp_path / "p2", max_pixels=1_000_000)
    assert grew < 40, f"peak RSS grew {grew:.0f} MB for a 200 MB member"


@needs_proc
def test_member_whose_header_declares_too_many_pixels_is_rejected_from_its_header(tmp_path):
    # 150 MB is within the declared-size bound for the default data.max_pixels (50M): the PNG header
    # (60000 x 60000 pixels) is what condemns it, read from the member's first MiB only.
    head = huge_png_header(60000, 60000)
    z = bomb_zip(tmp_path / "ds.zip", 150 << 20, head=head)
    m = prepare_cli(tmp_path, "ds.zip")
    reason = "decompression bomb: 60000x60000 pixels > data.max_pixels=50000000"
    assert m["rejected"] == [{"file": "dog/bomb.png", "reason": reason}]
    grew = peak_rss_growth_mb(z, tmp_path / "p2", max_pixels=50_000_000)
    assert grew < 40, f"peak RSS grew {grew:.0f} MB for a 150 MB member"


def padded_png_zip(path: Path, padding: int) -> Path:
    """The good images (the first with 2 MiB of zeros after its PNG: trailing bytes a 40x36 image
    may carry), then dog/bomb.png: a 40x36 PNG followed by `padding` zeros (written streaming)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, name in enumerate(GOOD):
            zf.writestr(name, png(i) + (bytes(2 << 20) if i == 0 else b""))
        with zf.open("dog/bomb.png", "w", force_zip64=True) as f:
            f.write(png(9))
            for _ in range(padding >> 20):
                f.write(bytes(1 << 20))
    return path


@needs_proc
def test_small_image_padded_with_hundreds_of_mb_is_rejected_from_its_header(tmp_path):
    # Before: the PNG's header (40x36) passed, so the 256 MiB member was read whole and accepted
    # (its zeros after IEND ignored by the decoder): the whole member in memory, twice.
    z = padded_png_zip(tmp_path / "ds.zip", 256 << 20)
    assert z.stat().st_size < 1 << 20
    grew, seconds = prepare_in_child(z, tmp_path / "prepared", 50_000_000)
    assert grew < 40 and seconds < 10, f"peak RSS grew {grew:.0f} MB in {seconds:.1f} s for a 256 MiB member"
    [entry] = json.loads((tmp_path / "prepared/manifest.json").read_text())["rejected"]
    size = zipfile.ZipFile(z).getinfo("dog/bomb.png").file_size
    assert entry["file"] == "dog/bomb.png"
    assert entry["reason"].startswith(f"decompression bomb: member declares {size} bytes > ")
    assert entry["reason"].endswith("the most a 40x36 image needs")


def overlapping_zip(path: Path, payload: bytes, shared_header: bool) -> Path:
    """The GOOD names as members that all read one deflate stream of `payload`, built by hand
    (zipfile never writes this): each local header's extra field holds the headers after it, so
    every header's data starts at the one stream; or (`shared_header`) every central entry names
    the first member's local header."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    data, crc = comp.compress(payload) + comp.flush(), zlib.crc32(payload)
    names = [n.encode() for n in GOOD]

    def local(name: bytes, extra: int) -> bytes:
        sizes = (crc, len(data), len(payload), len(name), extra)
        return struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, 8, 0, 0x21, *sizes) + name

    if shared_header:
        body, offsets = local(names[0], 0) + data, [0] * len(names)
    else:
        body = b""
        for name in reversed(names):  # header i's extra field: headers i+1.. (and their extras)
            body = local(name, len(body)) + body
        offsets = [sum(30 + len(n) for n in names[:i]) for i in range(len(names))]
        body += data
    central = b"".join(
        struct.pack(
            "<4sHHHHHHIIIHHHHHII",
            b"PK\x01\x02",
            20,
            20,
            0,
            8,
            0,
            0x21,
            crc,
            len(data),
            len(payload),
            len(name),
            0,
            0,
            0,
            0,
            0,
            offset,
        )
        + name
        for name, offset in zip(names, offsets, strict=True)
    )
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(names), len(names), len(central), len(body), 0)
    path.write_bytes(body + central + end)
    return path


@pytest.mark.unit
@pytest.mark.parametrize("shared_header", [False, True], ids=["extra-fields-swallow-headers", "one-header"])
def test_zip_members_sharing_one_deflate_stream_refuse_the_archive(tmp_path, shared_header):
    # Before: Python 3.11.7's zipfile read every member from the one stream: the six were
    # prepared as six images (CVE-2024-0450's layout); one-header: the first was read, the others
    # rejected one by one as corrupt (past max_rejected_fraction here, but not refused).
    payload = png(0) + bytes(4 << 20)
    z = overlapping_zip(tmp_path / "ds.zip", payload, shared_header)
    with zipfile.ZipFile(z) as zf:
        assert zf.read(GOOD[0]) == payload  # a readable zip, not a broken one
        if not shared_header:
            assert all(zf.read(n) == payload for n in GOOD)  # every member is the same stream
    (tmp_path / "params.yaml").write_text("data: {source: ds.zip}\n")
    r = cli(["prepare", "--quiet"], cwd=tmp_path)
    assert r.returncode == 1, (r.stdout, r.stderr)
    [line] = r.stderr.strip().splitlines()
    assert line.startswith(f"sagan: {z.name}: refused: member ")
    if shared_header:
        assert f"member {GOOD[1]!r}'s local header names {GOOD[0]!r}" in line
    else:
        assert f"member {GOOD[0]!r} (bytes 0-" in line and f"overlaps {GOOD[1]!r}" in line
        assert "5 members overlap the next" in line
    assert not (tmp_path / "data/prepared").exists()


# --- amplification: links, junk members, batches, huge listings -----------------------------

NOT_AN_IMAGE = "not an image: no known image header in the first 1 MiB of 52428800 bytes"


def add(tf: tarfile.TarFile, name: str, data: bytes | None = None, size: int = 0) -> None:
    """A file `name` holding `data` (or `size` zero bytes, streamed)."""
    info = tarfile.TarInfo(name)
    info.size = len(data) if data is not None else size
    tf.addfile(info, io.BytesIO(data) if data is not None else _Zeros(size))


def link(tf: tarfile.TarFile, name: str, target: str, hard: bool) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = (tarfile.LNKTYPE, target) if hard else (tarfile.SYMTYPE, target)
    tf.addfile(info)


class _Zeros(io.RawIOBase):
    def __init__(self, n: int):
        self.left = n

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def link_bomb(path: Path, hard: bool, links: int = 40, zero_mb: int = 50) -> Path:
    """The good images, a `zero_mb` MB zero-filled .png, then `links` links to it (a ~50 KB tar.gz)."""
    with tarfile.open(path, "w:gz") as tf:
        for i, name in enumerate(GOOD):
            add(tf, name, png(i))
        add(tf, "dog/zeros.png", size=zero_mb << 20)
        for i in range(links):
            link(tf, f"cat/link_{i}.png", "dog/zeros.png" if hard else "../dog/zeros.png", hard)
    return path


@needs_proc
@pytest.mark.parametrize("hard", [True, False], ids=["hard", "symbolic"])
def test_links_to_a_huge_zero_member_cost_bounded_memory_and_time(tmp_path, hard):
    # Before: every link re-read the 50 MB member in full (a gzip rewind each): 2,161 MB peak.
    tar = link_bomb(tmp_path / "ds.tar.gz", hard)
    assert tar.stat().st_size < 200_000
    grew, seconds = prepare_in_child(tar, tmp_path / "prepared", 50_000_000, rejected=41)
    assert grew < 300 and seconds < 30, f"peak RSS grew {grew:.0f} MB in {seconds:.1f} s"
    manifest = json.loads((tmp_path / "prepared/manifest.json").read_text())
    assert {r["reason"] for r in manifest["rejected"]} == {NOT_AN_IMAGE}
    assert sorted(r["file"] for r in manifest["rejected"]) == sorted(
        ["dog/zeros.png", *(f"cat/link_{i}.png" for i in range(40))]
    )


@pytest.mark.unit
@pytest.mark.unit
def test_links_are_read_once_from_memory_and_never_rewind_the_archive(tmp_path, monkeypatch):
    tar = tmp_path / "ds.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        folder = tarfile.TarInfo("dog")
        folder.type = tarfile.DIRTYPE
        tf.addfile(folder)
        link(tf, "cat/ahead.png", "../dog/img_0.png", hard=False)  # its target is not read yet
        for i, name in enumerate(GOOD):
            add(tf, name, png(i))
        link(tf, "cat/hard.png", "dog/img_0.png", hard=True)
        link(tf, "cat/sym.png", "../dog/img_1.png", hard=False)
        link(tf, "cat/chain.png", "sym.png", hard=False)  # a link to a link
        link(tf, "cat/loop_a.png", "loop_b.png", hard=False)
        link(tf, "cat/loop_b.png", "loop_a.png", hard=False)
        link(tf, "cat/dir.png", "../dog", hard=False)
    rewinds = []
    seek = gzip.GzipFile.seek

    def tracked_seek(self, offset, whence=io.SEEK_SET):
        if whence == io.SEEK_SET and offset < self.tell():
            rewinds.append((self.tell(), offset))
        return seek(self, offset, whence)

    src = archive_source(tar, "ds")
    monkeypatch.setattr(gzip.GzipFile, "seek", tracked_seek)
    read = [p for batch in src.payloads(512, 10**6) for p in batch]
    payloads = {src.members[src.items[i][0]]: p for i, p in zip(src.read_order, read, strict=True)}
    assert rewinds == []
    assert payloads["cat/hard.png"] is payloads["dog/img_0.png"] == png(3)  # shared, not re-read
    assert payloads["cat/sym.png"] is payloads["cat/chain.png"] is payloads["dog/img_1.png"]
    why = {n: p.reason for n, p in payloads.items() if isinstance(p, archives.BadMember)}
    assert why == {
        "cat/ahead.png": "unreadable: link to a member later in the archive",
        "cat/loop_a.png": "unreadable: link loop",
        "cat/loop_b.png": "unreadable: link loop",
        "cat/dir.png": "unreadable: link to a directory",
    }


@needs_proc
def test_large_member_with_no_image_header_is_rejected_from_its_first_mib(tmp_path):
    # Before: within the size limit and not a bomb by its header, it was read whole (150 MB).
    z = bomb_zip(tmp_path / "ds.zip", 150 << 20, head=b"just some text, then zeros")
    grew, _ = prepare_in_child(z, tmp_path / "prepared", 50_000_000)
    assert grew < 40, f"peak RSS grew {grew:.0f} MB for a 150 MB member"
    [entry] = json.loads((tmp_path / "prepared/manifest.json").read_text())["rejected"]
    size = zipfile.ZipFile(z).getinfo("dog/bomb.png").file_size
    reason = f"not an image: no known image header in the first 1 MiB of {size} bytes"
    assert entry == {"file": "dog/bomb.png", "reason": reason}


@pytest.mark.unit
@pytest.mark.unit
def test_a_batch_holds_at_most_chunk_bytes(tmp_path, monkeypatch):
    padded = [png(i) + bytes(300_000) for i in range(6)]  # valid PNGs with trailing bytes
    tar = tmp_path / "ds.tar"
    with tarfile.open(tar, "w") as tf:
        for name, data in zip(GOOD, padded, strict=True):
            add(tf, name, data)
        link(tf, "cat/again.png", "img_0.png", hard=False)
    monkeypatch.setattr(archives, "CHUNK_BYTES", 700_000)
    batches = list(archive_source(tar, "ds").payloads(512, 10**6))
    assert [len(b) for b in batches] == [2, 2, 2, 1]  # a link counts its bytes again
    assert all(sum(map(len, b)) <= 700_000 for b in batches)
    monkeypatch.setattr(archives, "CHUNK_BYTES", 100_000)  # one member over the budget: alone
    assert [len(b) for b in archive_source(tar, "ds").payloads(4, 10**6)] == [1] * 7


class CountingName(str):
    """A member name that counts its comparisons (a quadratic duplicate check makes n²/2)."""

    compared = 0

    def __eq__(self, other: object) -> bool:
        CountingName.compared += 1
        if CountingName.compared > 100_000:
            raise AssertionError("the duplicate-name check compares names pairwise (quadratic)")
        return str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.mark.unit
@pytest.mark.unit
def test_listing_20k_members_checks_duplicates_in_linear_time(tmp_path, monkeypatch):
    tar = tmp_path / "ds.tar"
    with tarfile.open(tar, "w") as tf:
        add(tf, "a.png", png(0))
    names = [f"c{i % 10}/img_{i}.png" for i in range(20_000)]
    names.append(names[-1])  # the duplicate: last, as a pairwise check finds it latest
    CountingName.compared, members = 0, []
    for n in names:
        m = tarfile.TarInfo(CountingName(n))
        m.name = CountingName(n)
        members.append(m)
    monkeypatch.setattr(tarfile.TarFile, "getmembers", lambda self: members)
    with pytest.raises(SaganError, match="member 'c9/img_19999.png' appears more than once"):
        archives.checked_members(tar)
    assert CountingName.compared < 1000  # a set: only hash collisions compare
