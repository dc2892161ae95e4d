"""Ingestion: sources, per-file validation with reasons, conversions, determinism, safe archives.

Longer than 300 lines: the source kinds (folders, archives, demo) share the image and archive
builders at the top; one module keeps them next to every case that uses them.
"""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import cli, project_params
from PIL import Image

from sagan_core.config import DataConfig
from sagan_core.data.prepare import prepare
from sagan_core.data.rejections import rejection_summary
from sagan_core.errors import ConfigError, SaganError
from sagan_core.train.trainer import train

pytestmark = pytest.mark.unit


def cfg(tmp: Path, source, **kw) -> DataConfig:
    return DataConfig(source=str(source), prepared_dir=str(tmp / "prepared"), **kw)


def write_png(path: Path, rgb=(10, 200, 30), size=(40, 36), mode="RGB") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, rgb if mode == "RGB" else rgb[0]).save(path)
    return path.read_bytes()


def image_folder(root: Path, classes=("cat", "dog"), per_class=12) -> Path:
    """Distinct colours per image so order and content checks mean something."""
    for ci, c in enumerate(classes):
        for i in range(per_class):
            write_png(root / c / f"img_{i:03d}.png", rgb=(20 * i % 256, 100 + 50 * ci, 7 * i % 256))
    return root


def huge_png_header(width: int, height: int) -> bytes:
    """A real PNG signature + IHDR claiming width x height, followed by a tiny IDAT: the classic
    decompression-bomb shape (a few bytes that would decode into gigabytes)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
        + chunk(b"IEND", b"")
    )


def flip_bytes_after(data: bytes, marker: bytes, n: int = 10) -> bytes:
    """Valid header, garbled compressed pixels: a file that identifies but cannot decode."""
    i = data.index(marker) + len(marker)
    return data[:i] + bytes(b ^ 0x5A for b in data[i : i + n]) + data[i + n :]


def plant_bad_files(root: Path) -> dict[str, str]:
    """One real broken file per rejection reason, inside class folders; returns name -> reason."""
    good = (root / "cat" / "img_000.png").read_bytes()
    jpg = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(jpg, "JPEG")
    bad = {
        "cat/zero.png": (b"", "empty file"),
        "cat/notes.jpg": (b"this is a text file, not a JPEG\n" * 4, "not an image"),
        "dog/truncated.png": (good[: len(good) // 2], "truncated"),
        "dog/truncated.jpg": (jpg.getvalue()[: len(jpg.getvalue()) // 2], "truncated"),
        "dog/corrupt.png": (flip_bytes_after(good, b"IDAT"), "corrupt"),
        "cat/bomb.png": (huge_png_header(30000, 30000), "decompression bomb"),
    }
    for name, (data, _) in bad.items():
        (root / name).write_bytes(data)
    tiny = root / "dog" / "tiny.png"
    Image.new("RGB", (5, 5), (9, 9, 9)).save(tiny)
    # A dangling link refuses the whole folder (DVC fails on it): test_data_folder_safety.py
    return {n: r for n, (_, r) in bad.items()} | {"dog/tiny.png": "too small"}


@pytest.mark.integration
def test_each_broken_file_is_rejected_with_its_reason_and_nothing_valid_is_lost(tmp_path):
    root = image_folder(tmp_path / "src")
    expected = plant_bad_files(root)
    n_good = 24
    m = prepare(cfg(tmp_path, root, max_rejected_fraction=0.5, workers=2), progress=False)
    got = {r["file"]: r["reason"].split(":")[0] for r in m["rejected"]}
    assert got == expected
    assert m["num_images"] == n_good and m["num_rejected"] == len(expected)
    images = np.load(tmp_path / "prepared/images.npy", mmap_mode="r")
    labels = np.load(tmp_path / "prepared/labels.npy")
    assert images.shape == (n_good, 1, 32, 32) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [12, 12]
    assert sum(rejection_summary(m).values()) == len(expected)
    assert json.loads((tmp_path / "prepared/manifest.json").read_text()) == m


@pytest.mark.integration
def test_cli_prints_rejection_summary_and_the_folder_trains(tmp_path):
    root = image_folder(tmp_path / "src")
    plant_bad_files(root)
    (tmp_path / "params.yaml").write_text("data: {source: src, channels: 3, max_rejected_fraction: 0.5}\n")
    r = cli(["prepare", "--quiet"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "24 images" in r.stderr and "7 rejected" in r.stderr and "truncated: 2" in r.stderr
    summary = train(project_params(tmp_path, data__channels=3, train__steps=2), progress=False)
    assert summary["step"] == 2 and (tmp_path / "models/checkpoint.pt").exists()


@pytest.mark.unit
def test_too_many_rejections_fail_with_exit_1_and_a_clear_message(tmp_path):
    root = image_folder(tmp_path / "src", per_class=3)
    plant_bad_files(root)
    (tmp_path / "params.yaml").write_text("data: {source: src}\n")
    r = cli(["prepare", "--quiet"], cwd=tmp_path)
    assert r.returncode == 1
    assert "rejected" in r.stderr and "data.max_rejected_fraction" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "data/prepared/images.npy").exists()


def test_nothing_valid_fails(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src/a.png").write_bytes(b"")
    with pytest.raises(SaganError, match="no valid images"):
        prepare(cfg(tmp_path, tmp_path / "src", max_rejected_fraction=1.0), progress=False)


def test_missing_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        prepare(cfg(tmp_path, tmp_path / "nope"), progress=False)


def test_class_names_are_sorted_not_file_order(tmp_path):
    root = tmp_path / "src"
    # Created in reverse order (and so listed in that order by many filesystems).
    for c, colour in (("zebra", 250), ("Apple", 10), ("mango", 128)):
        for i in range(3):
            write_png(root / c / f"{i}.png", rgb=(colour, colour, colour))
    m = prepare(cfg(tmp_path, root), progress=False)
    assert m["class_names"] == sorted(["zebra", "Apple", "mango"])
    images = np.load(tmp_path / "prepared/images.npy")
    labels = np.load(tmp_path / "prepared/labels.npy")
    for label, name in enumerate(m["class_names"]):
        colour = {"zebra": 250, "Apple": 10, "mango": 128}[name]
        assert np.all(np.abs(images[labels == label].astype(int) - colour) <= 1)


@pytest.mark.integration
def test_content_hash_is_deterministic_and_tracks_content(tmp_path):
    root = image_folder(tmp_path / "src")
    h1 = prepare(cfg(tmp_path / "a", root, workers=2), progress=False)["content_hash"]
    h2 = prepare(cfg(tmp_path / "b", root, workers=1), progress=False)["content_hash"]
    copy = tmp_path / "copy"
    image_folder(copy)  # same bytes, different location
    h3 = prepare(cfg(tmp_path / "c", copy), progress=False)["content_hash"]
    assert h1 == h2 == h3
    assert (tmp_path / "a/prepared/images.npy").read_bytes() == (
        tmp_path / "b/prepared/images.npy"
    ).read_bytes()
    write_png(root / "cat" / "img_000.png", rgb=(0, 0, 0))
    assert prepare(cfg(tmp_path / "d", root), progress=False)["content_hash"] != h1
    h_res = prepare(cfg(tmp_path / "e", copy, resolution=64), progress=False)["content_hash"]
    assert h_res != h1


def test_flat_folder_is_unconditional(tmp_path):
    for i in range(5):
        write_png(tmp_path / "flat" / f"{i}.png")
    (tmp_path / "flat" / "README.txt").write_text("not data")
    m = prepare(cfg(tmp_path, tmp_path / "flat"), progress=False)
    assert m["num_classes"] == 0 and m["num_images"] == 5 and m["num_ignored"] == 1


def test_split_folders_are_merged_by_class(tmp_path):
    for split in ("train", "test"):
        for c in ("b", "a"):
            for i in range(2):
                write_png(tmp_path / "src" / split / c / f"{i}.png")
    m = prepare(cfg(tmp_path, tmp_path / "src"), progress=False)
    assert m["class_names"] == ["a", "b"] and m["class_counts"] == [4, 4]


def test_exif_orientation_is_honoured(tmp_path):
    # Stored: top half white, bottom half black. EXIF orientation 6 = "rotate 90 degrees clockwise
    # to display", which moves the top edge to the right: displayed left half black, right white.
    arr = np.zeros((64, 64), dtype=np.uint8)
    arr[:32] = 255
    img = Image.fromarray(arr, "L")
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "src").mkdir()
    img.save(tmp_path / "src/rot.jpg", exif=exif.tobytes(), quality=95)
    prepare(cfg(tmp_path, tmp_path / "src"), progress=False)
    out = np.load(tmp_path / "prepared/images.npy")[0, 0].astype(float)
    assert out[:, :12].mean() < 30 and out[:, -12:].mean() > 225
    assert abs(out[:12].mean() - out[-12:].mean()) < 30  # no top/bottom split left


def test_modes_are_converted_correctly(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    # 16-bit grayscale at half range: must become ~128 (a clipping conversion would give 255).
    Image.fromarray(np.full((32, 32), 32768, dtype=np.uint16)).save(src / "a16.png")
    # Fully transparent RGBA: flattened onto white whatever its hidden colour.
    Image.new("RGBA", (32, 32), (0, 0, 0, 0)).save(src / "b_rgba.png")
    # Palette image with a red entry.
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([255, 0, 0] + [0, 0, 0] * 255)
    pal.save(src / "c_pal.png")
    Image.new("L", (32, 32), 77).save(src / "d_gray.png")
    m = prepare(cfg(tmp_path, src, channels=3), progress=False)
    x = np.load(tmp_path / "prepared/images.npy").astype(int)
    assert m["num_images"] == 4 and x.shape == (4, 3, 32, 32)
    assert np.all(np.abs(x[0] - 128) <= 1)
    assert np.all(x[1] == 255)
    assert np.all(x[2, 0] == 255) and np.all(x[2, 1:] == 0)
    assert np.all(x[3] == 77)
    m1 = prepare(cfg(tmp_path / "gray", src, channels=1), progress=False)
    g = np.load(tmp_path / "gray/prepared/images.npy").astype(int)
    assert m1["num_images"] == 4 and g.shape == (4, 1, 32, 32)
    assert np.all(np.abs(g[2] - 76) <= 1)  # ITU-R 601 luma of pure red: 0.299 * 255


def test_32_bit_integer_images_are_clipped_to_16_bits_then_scaled():
    from sagan_core.data.decode import _to_mode

    arr = np.tile(np.array([-5, 0, 256, 32768, 65535, 70000], dtype=np.int32), (3, 1))
    out = np.asarray(_to_mode(Image.fromarray(arr, mode="I"), 1))
    assert out[0].tolist() == [0, 0, 1, 128, 255, 255]


def _tar_with(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def test_archives_prepare_like_the_folder(tmp_path):
    root = image_folder(tmp_path / "ds" / "mydata")
    ref = prepare(cfg(tmp_path / "ref", root), progress=False)
    tgz = tmp_path / "ds.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(root, arcname="mydata")
    z = tmp_path / "ds.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for p in sorted(root.rglob("*.png"), reverse=True):  # archive order must not matter
            zf.write(p, p.relative_to(root).as_posix())
        zf.writestr("__MACOSX/cat/._img_000.png", b"junk")
    for archive in (tgz, z):
        m = prepare(cfg(tmp_path / f"out-{archive.suffix}", archive), progress=False)
        assert m["content_hash"] == ref["content_hash"] and m["class_names"] == ["cat", "dog"]
        assert m["rejected"] == []


@pytest.mark.parametrize(
    "member",
    [
        _file("../evil.png", b"x"),
        _file("/tmp/evil-absolute.png", b"x"),
        _file("ok/../../evil.png", b"x"),
    ],
    ids=["dotdot", "absolute", "nested-dotdot"],
)
def test_archive_path_traversal_is_refused(tmp_path, member):
    png = _file("data/a.png", write_png(tmp_path / "a.png"))
    archive = _tar_with(tmp_path / "evil.tar.gz", [png, member])
    with pytest.raises(SaganError, match="refused"):
        prepare(cfg(tmp_path, archive), progress=False)
    assert not (tmp_path.parent / "evil.png").exists() and not Path("/tmp/evil-absolute.png").exists()


def test_archive_links_outside_and_device_files_are_refused(tmp_path):
    png = _file("data/a.png", write_png(tmp_path / "a.png"))
    link = tarfile.TarInfo("data/b.png")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    hard = tarfile.TarInfo("data/c.png")
    hard.type, hard.linkname = tarfile.LNKTYPE, "/etc/passwd"
    dev = tarfile.TarInfo("data/d.png")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    for i, bad in enumerate((link, hard, dev)):
        archive = _tar_with(tmp_path / f"bad{i}.tar", [png, (bad, None)])
        with pytest.raises(SaganError, match="refused"):
            prepare(cfg(tmp_path, archive), progress=False)
    # A link that stays inside the archive is fine.
    inner = tarfile.TarInfo("data/e.png")
    inner.type, inner.linkname = tarfile.SYMTYPE, "a.png"
    ok = _tar_with(tmp_path / "ok.tar", [png, (inner, None)])
    assert prepare(cfg(tmp_path, ok), progress=False)["num_images"] == 2


def test_zip_traversal_is_refused(tmp_path):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("data/a.png", write_png(tmp_path / "a.png"))
        zf.writestr("../../evil.png", b"x")
    with pytest.raises(SaganError, match="refused"):
        prepare(cfg(tmp_path, z), progress=False)


def test_torchvision_offline_says_where_to_put_the_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvd.utils, "urlopen", offline, raising=False)
    monkeypatch.setattr(tvd.CIFAR10, "download", lambda self: offline())
    with pytest.raises(SaganError, match=r"data/raw/torchvision/CIFAR10"):
        prepare(cfg(tmp_path, "torchvision:CIFAR10"), progress=False)
    with pytest.raises(ConfigError, match="unknown torchvision dataset"):
        prepare(cfg(tmp_path, "torchvision:NoSuchSet"), progress=False)
