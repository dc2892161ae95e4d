"""Hostile image files in a folder source: bounded memory, no hang, no code execution.

- a 3,125,000 x 16 PNG (146 KB; passes data.max_pixels and data.min_size) is decoded small, cropped
  before it is resized: peak memory growth stays under 300 MB (the whole-image resize allocated
  1.7 GB at 64 px and ~36 GiB at 256 px);
- a decoding worker killed mid-file (the OOM killer, kill -9) ends `sagan prepare` with exit 1 and
  a line naming that file, in seconds, where the pool used to wait forever;
- an EPS file named .png is "not an image": Pillow's EPS plugin (which runs Ghostscript) is never
  chosen; a stand-in `gs` on PATH records any call.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, run_cli
from PIL import Image

from sagan_core.data.decode import read_rgb
from sagan_core.errors import ConfigError

pytestmark = pytest.mark.e2e

needs_proc = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def strip_png(path: Path, width: int = 3_125_000, height: int = 16) -> None:
    """A grey PNG, width x height, a left-to-right ramp 0..255 (written without holding it whole)."""
    row = b"\0" + (np.arange(width, dtype=np.int64) * 256 // width).astype(np.uint8).tobytes()
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def good_pngs(root: Path, n: int = 4) -> list[str]:
    names = []
    for i in range(n):
        (root / "ok").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 36), (40 * i, 100, 200 - 30 * i)).save(root / "ok" / f"img_{i}.png")
        names.append(f"ok/img_{i}.png")
    return names


def prepare_in_child(
    source: Path, prepared: Path, resolution: int, channels: int
) -> tuple[float, float, dict]:
    """Prepare in a fresh process (one worker: decoding happens in it); (peak RSS growth in MB
    (VmHWM, as test_hostile_archives measures it), seconds, manifest)."""
    script = f"""
import json, time
from sagan_core.config import DataConfig
from sagan_core.data.prepare import prepare
def peak_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
cfg = DataConfig(source={str(source)!r}, prepared_dir={str(prepared)!r}, resolution={resolution},
                 channels={channels}, workers=1)
before, t = peak_kb(), time.perf_counter()
m = prepare(cfg, progress=False)
print(json.dumps([(peak_kb() - before) / 1024, time.perf_counter() - t, m]))
"""
    env = os.environ | {"PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    grew, seconds, manifest = json.loads(r.stdout)
    return grew, seconds, manifest


@needs_proc
@pytest.mark.parametrize(("resolution", "channels"), [(64, 1), (256, 3)])
def test_extreme_aspect_ratio_is_cropped_before_resizing(tmp_path, resolution, channels):
    src = tmp_path / "src"
    good = good_pngs(src)
    strip_png(src / "ok" / "strip.png")
    assert (src / "ok" / "strip.png").stat().st_size < 200_000
    grew, seconds, m = prepare_in_child(src, tmp_path / "prepared", resolution, channels)
    assert m["num_images"] == len(good) + 1 and m["rejected"] == [], m["rejected"]
    assert grew < 300, f"peak RSS grew {grew:.0f} MB decoding a 3,125,000 x 16 PNG at {resolution} px"
    assert seconds < 30, f"{seconds:.1f} s"
    images = np.load(tmp_path / "prepared/images.npy")
    strip = images[sorted([*good, "ok/strip.png"]).index("ok/strip.png")]
    assert strip.shape == (channels, resolution, resolution)
    assert abs(float(strip.mean()) - 127.5) < 2  # the middle of the ramp: the center crop


@pytest.mark.unit
@pytest.mark.unit
def test_ordinary_images_keep_resize_then_crop(tmp_path):
    """Below 16:1 the crop-first path is not taken (its box resampling differs by rounding)."""
    from sagan_core.data.decode import to_array

    rng = np.random.default_rng(0)
    for w, h, res in [(640, 480, 256), (100, 31, 32), (48, 700, 64), (33, 33, 32)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        scale = res / min(w, h)
        nw, nh = max(res, round(w * scale)), max(res, round(h * scale))
        want = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
        left, top = (nw - res) // 2, (nh - res) // 2
        want = np.asarray(want.crop((left, top, left + res, top + res))).transpose(2, 0, 1)
        assert np.array_equal(to_array(img, res, 3), want), (w, h, res)


# --- a worker killed mid-file -------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_worker_on(root: Path, slow: set[str], pid: int, deadline: float) -> str | None:
    """SIGKILL the descendant of `pid` that has one of the `slow` files open; that file's name."""
    while time.monotonic() < deadline:
        for child in _descendants(pid):
            try:
                fds = [os.readlink(fd) for fd in Path(f"/proc/{child}/fd").iterdir()]
            except OSError:
                continue
            for target in fds:
                name = os.path.relpath(target, root) if target.startswith(str(root)) else ""
                if name in slow:
                    os.kill(child, signal.SIGKILL)
                    return name
        time.sleep(0.002)
    return None


@needs_proc
def test_killed_decoding_worker_is_exit_1_naming_the_file(tmp_path):
    src = tmp_path / "src"
    good_pngs(src, 40)
    big = tmp_path / "big.png"
    Image.new("L", (7000, 7000), 90).save(big)  # ~50 KB, 49 M pixels: a few hundred ms to decode
    slow = {f"ok/slow_{i}.png" for i in range(8)}
    for name in slow:
        (src / name).write_bytes(big.read_bytes())
    (tmp_path / "params.yaml").write_text(f"data: {{source: {src}, workers: 2}}\n")
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "prepare", "--quiet"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        killed = _kill_worker_on(src, slow, proc.pid, time.monotonic() + 60)
        assert killed, "no worker was seen decoding a slow file"
        t = time.monotonic()
        out, err = proc.communicate(timeout=30)
        seconds = time.monotonic() - t
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 1, err[-3000:]
    assert seconds < 30
    assert killed in err and "killed by SIGKILL" in err and "Traceback" not in err, err[-3000:]
    assert not (tmp_path / "data/prepared").exists()
    assert not list((tmp_path / "data").glob(".prepared.*"))  # the half-built dataset is gone


# --- format by content --------------------------------------------------------------------------

EPS = (
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\nnewpath 0 0 moveto showpage\n%%EOF\n"
)


@pytest.fixture
def standin_gs(tmp_path) -> tuple[dict, Path]:
    """A PATH whose `gs` only records that it was called (in a marker file); (env, marker)."""
    bin_dir, marker = tmp_path / "bin", tmp_path / "gs-was-called"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f'#!/bin/sh\necho "$@" >> {marker}\nexit 1\n')
    (bin_dir / "gs").chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}, marker


def test_eps_named_png_is_not_an_image_and_ghostscript_never_runs(tmp_path, standin_gs):
    env, marker = standin_gs
    src = tmp_path / "src"
    good = good_pngs(src)
    (src / "ok" / "evil.png").write_bytes(EPS)
    with Image.open(src / "ok" / "evil.png") as img:
        assert img.format == "EPS"  # Pillow alone would pick its EPS plugin
    (tmp_path / "params.yaml").write_text(f"data: {{source: {src}, max_rejected_fraction: 0.5}}\n")
    r = run_cli(["prepare", "--quiet"], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "data/prepared/manifest.json").read_text())
    assert m["num_images"] == len(good)
    [entry] = m["rejected"]
    assert entry["file"] == "ok/evil.png" and entry["reason"].startswith("not an image"), entry
    assert not marker.exists(), f"Ghostscript ran: {marker.read_text()}"


@pytest.mark.unit
@pytest.mark.unit
def test_allowed_formats_still_decode_whatever_their_extension(tmp_path):
    """The allowlist goes by content: a camera's multi-picture JPEG (Pillow: MPO), a PNG named .jpg."""
    from sagan_core.config import DataConfig
    from sagan_core.data.prepare import prepare

    src = tmp_path / "src" / "ok"
    src.mkdir(parents=True)
    first, second = Image.new("RGB", (40, 40), (200, 10, 10)), Image.new("RGB", (40, 40), 9)
    first.save(src / "camera.jpg", "MPO", save_all=True, append_images=[second])
    Image.new("RGB", (40, 40), (10, 200, 10)).save(src / "renamed.jpg", "PNG")
    with Image.open(src / "camera.jpg") as img:
        assert img.format == "MPO"
    m = prepare(
        DataConfig(source=str(src.parent), prepared_dir=str(tmp_path / "p"), channels=3, workers=1), False
    )
    assert m["num_images"] == 2 and m["rejected"] == []


@pytest.mark.unit
@pytest.mark.unit
def test_fid_folder_reader_refuses_eps_without_ghostscript(tmp_path, standin_gs, monkeypatch):
    env, marker = standin_gs
    monkeypatch.setenv("PATH", env["PATH"])
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # look for gs again, on this PATH
    (tmp_path / "x.png").write_bytes(EPS)
    with pytest.raises(ConfigError, match="not a readable image"):
        read_rgb(tmp_path / "x.png")
    assert not marker.exists()
