"""The prepared dataset is replaced as a whole, and checked against its content_hash when opened.

prepare builds the new dataset in a directory beside data.prepared_dir and swaps it in whole: an
error or a crash at any step leaves the previous dataset readable with its own hash (it used to
leave new images under the old manifest, whose hash then keyed stale FID reference statistics).
open_prepared recomputes the hash: changed or half-copied files are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import sagan_core.data.prepare as prep
from sagan_core.config import DataConfig
from sagan_core.data.dataset import open_prepared
from sagan_core.errors import SaganError

pytestmark = pytest.mark.unit


def folder(root: Path, shade: int, n: int = 6) -> Path:
    for i in range(n):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("L", (34, 40), shade + 7 * i).save(root / f"c{i % 2}" / f"{i}.png")
    return root


def cfg(source: Path, prepared: Path) -> DataConfig:
    return DataConfig(source=str(source), prepared_dir=str(prepared), workers=1)


def leftovers(prepared: Path) -> list[str]:
    """Temp files or build directories left beside or inside the prepared dataset."""
    beside = [p.name for p in prepared.parent.iterdir() if p.name.startswith(f".{prepared.name}.")]
    inside = [
        p.name for p in prepared.iterdir() if p.name not in {"images.npy", "labels.npy", "manifest.json"}
    ]
    return beside + inside


@pytest.mark.parametrize("step", ["manifest", "labels"])
def test_failure_while_writing_leaves_the_old_dataset_with_its_hash(tmp_path, monkeypatch, step):
    out = tmp_path / "data/prepared"
    old = prep.prepare(cfg(folder(tmp_path / "a", 10), out), progress=False)
    old_images = np.load(out / "images.npy")

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    # Same image count, other pixels: the case where a half-written dataset kept the old hash.
    if step == "manifest":
        monkeypatch.setattr(prep, "write_json", crash)
    else:
        monkeypatch.setattr(np, "save", crash)
    with pytest.raises(OSError, match="simulated crash"):
        prep.prepare(cfg(folder(tmp_path / "b", 120), out), progress=False)
    monkeypatch.undo()
    data = open_prepared(out)
    assert data.manifest["content_hash"] == old["content_hash"]
    assert np.array_equal(data.images, old_images)
    assert leftovers(out) == []


def test_a_new_dataset_replaces_the_old_one_whole(tmp_path):
    out = tmp_path / "data/prepared"
    prep.prepare(cfg(folder(tmp_path / "a", 10), out), progress=False)
    (out / "images.npy.tmp").write_bytes(b"left by an older sagan")
    stale = tmp_path / "data" / ".prepared.999999999.x.tmp"  # a build whose process is gone
    stale.mkdir()
    new = prep.prepare(cfg(folder(tmp_path / "b", 120), out), progress=False)
    assert open_prepared(out).manifest["content_hash"] == new["content_hash"]
    assert leftovers(out) == []


def test_prepared_dir_that_is_a_link_is_rebuilt_where_it_points(tmp_path):
    target, link = tmp_path / "big-disk/prepared", tmp_path / "data/prepared"
    target.mkdir(parents=True)
    link.parent.mkdir()
    link.symlink_to(target)
    m = prep.prepare(cfg(folder(tmp_path / "a", 10), link), progress=False)
    assert link.is_symlink() and (target / "manifest.json").exists()
    assert open_prepared(link).manifest["content_hash"] == m["content_hash"]


@pytest.mark.parametrize("name", ["images.npy", "labels.npy"])
def test_tampered_prepared_files_are_refused_when_opened(tmp_path, name):
    out = tmp_path / "data/prepared"
    prep.prepare(cfg(folder(tmp_path / "a", 10), out), progress=False)
    with open(out / name, "r+b") as f:  # one byte, size unchanged
        f.seek(os.path.getsize(out / name) - 3)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(SaganError, match="do not match its content_hash") as e:
        open_prepared(out)
    assert "run `sagan prepare` again" in str(e.value) and "\n" not in str(e.value)
