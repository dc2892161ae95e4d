"""Hostile or broken archive members (dangling symlinks, bad CRCs, encryption, decompression bombs,
pixel bombs): each is one rejected file, never a crash of `sagan prepare`.

Each case builds an archive of good images plus one broken member, runs `sagan prepare` as a user
would, and checks that the good images are prepared and the bad member is listed with its reason.
A member declaring a huge size is rejected without being read: memory stays bounded.
"""

from __future__ import annotations

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
from helpers import REPO, run_cli
from PIL import Image

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
    r = run_cli(["prepare", "--quiet", *extra], cwd=project)
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


def test_zip_member_with_a_bad_crc_is_one_rejected_file(tmp_path):
    z, raw, info = zip_to_damage(tmp_path, "dog/bad.png", png(7))
    # Stored data follows the 30-byte local header, the name and the extra field.
    data_at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_at + 40] ^= 0xFF
    z.write_bytes(bytes(raw))
    m = prepare_cli(tmp_path, "ds.zip")
    assert m["rejected"] == [{"file": "dog/bad.png", "reason": "corrupt: bad CRC"}]


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
    """Prepare `archive` in a fresh process; how much its peak RSS grew while doing so (MB).

    VmHWM (Linux), not ru_maxrss: a child's ru_maxrss starts at its parent's peak (pytest's, with
    torch imported), which would hide any growth below it."""
    script = f"""
from sagan_core.config import DataConfig
from sagan_core.data.prepare import prepare
def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
cfg = DataConfig(source={str(archive)!r}, prepared_dir={str(prepared)!r}, max_pixels={max_pixels},
                 max_rejected_fraction=0.5, workers=1)
before = peak_kb()
m = prepare(cfg, progress=False)
assert (m["num_images"], m["num_rejected"]) == ({len(GOOD)}, 1), m
print((peak_kb() - before) / 1024)
"""
    env = {"PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return float(r.stdout)


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
