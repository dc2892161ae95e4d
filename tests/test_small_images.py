"""A newcomer's small grayscale images (issue 32): 26 class folders of 28-px grayscale letters in an
archive (helpers.letters_archive). `sagan init --data` looks at a sample and picks the gray32 preset
or warns about the given one in one line; folder64's prepare fails naming the reason and its count
and lists every file's reason beside data.prepared_dir; gray32 prepares every letter."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, cli, letters_archive

from sagan_core.params_file import load_params

pytestmark = pytest.mark.unit

CLASSES, PER_CLASS = 26, 6
LETTERS = CLASSES * PER_CLASS
PRESETS = REPO / "pipelines/project/presets"


@pytest.fixture
def letters(tmp_path) -> Path:
    return letters_archive(tmp_path / "letters.tar.gz", classes=CLASSES, per_class=PER_CLASS, size=28)


def project_on(tmp_path: Path, preset: str, source: Path) -> Path:
    """A folder whose params.yaml is the packaged preset, data.source set to `source` (what `sagan
    init --preset P --data SOURCE` writes, without git and DVC)."""
    proj = tmp_path / preset
    proj.mkdir()
    text = (PRESETS / f"{preset}.yaml").read_text()
    text = text.replace("source: data/raw/images", f"source: {source}", 1)
    (proj / "params.yaml").write_text(text)
    assert load_params(proj / "params.yaml").data.source == str(source)
    return proj


@pytest.mark.integration  # init runs git init and dvc init
def test_init_without_a_preset_picks_gray32_for_small_grayscale_images_and_says_so(tmp_path, letters):
    r = cli(["init", "proj", "--data", str(letters)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    said = r.stdout.splitlines()[0]
    assert "28x28 px" in said and "grayscale" in said and f"{CLASSES} classes" in said, said
    assert "picked preset gray32" in said, said
    assert r.stderr.strip() == ""  # nothing to warn about
    params = load_params(tmp_path / "proj/params.yaml")
    assert (params.data.resolution, params.data.channels, params.data.hflip) == (32, 1, False)
    assert params.data.source == str(letters)
    assert "gray32" in (tmp_path / "proj/README.md").read_text()


@pytest.mark.integration  # init runs git init and dvc init
def test_init_with_folder64_on_small_grayscale_images_warns_in_one_line_naming_min_size(tmp_path, letters):
    r = cli(["init", "proj", "--preset", "folder64", "--data", str(letters)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr  # a warning: the project is made as asked
    warning = r.stderr.strip().splitlines()
    assert len(warning) == 1 and warning[0].startswith("warning: "), warning
    assert "data.min_size 64" in warning[0] and "prepare would fail" in warning[0], warning
    assert "data.channels 3 for grayscale images" in warning[0] and "--preset gray32" in warning[0]
    assert load_params(tmp_path / "proj/params.yaml").data.min_size == 64  # folder64, as given


def test_prepare_with_folder64_on_the_letters_names_too_small_with_its_count_and_lists_every_file(
    tmp_path, letters
):
    proj = project_on(tmp_path, "folder64", letters)
    r = cli(["prepare", "--quiet"], cwd=proj)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert (
        f"no valid images ({LETTERS} rejected): too small: {LETTERS} (short side under data.min_size 64);"
        in (lines[0])
    )
    assert "per-file reasons in data/prepared.rejected.json" in lines[0]
    listed = json.loads((proj / "data/prepared.rejected.json").read_text())
    with tarfile.open(letters) as tar:
        members = {m.name.removeprefix("letters/") for m in tar.getmembers() if m.isfile()}
    assert {r["file"] for r in listed["rejected"]} == members and len(listed["rejected"]) == LETTERS
    assert all(r["reason"].startswith("too small: 28x28") for r in listed["rejected"])
    assert listed["by_reason"] == {"too small": LETTERS}
    assert not (proj / "data/prepared").exists()  # no manifest: nothing prepared
    # The same project on gray32's data keys: prepared, and the list of the failed try is gone.
    gray = yaml.safe_load((PRESETS / "gray32.yaml").read_text())["data"]
    sets = [f"data.{k}={v}" for k, v in gray.items() if k != "source"]
    r = cli(["prepare", "--quiet", *(x for s in sets for x in ("--set", s))], cwd=proj)
    assert r.returncode == 0, r.stderr
    assert not (proj / "data/prepared.rejected.json").exists()


def test_too_many_rejected_names_the_top_reasons_most_frequent_first_and_lists_every_file(tmp_path):
    from PIL import Image

    src = tmp_path / "glyphs"
    for c in "AB":
        (src / c).mkdir(parents=True)
        for i in range(10):
            Image.new("L", (28, 28), 20 * i).save(src / c / f"{i}.png")
    for i in range(3):
        Image.new("L", (12, 12), 0).save(src / f"A/small{i}.png")  # under gray32's min_size 16
    (src / "B/empty.png").write_bytes(b"")
    proj = project_on(tmp_path, "gray32", src)
    r = cli(["prepare", "--quiet"], cwd=proj)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert "4 of 24 images rejected" in lines[0] and "data.max_rejected_fraction=0.05" in lines[0]
    assert "too small: 3 (short side under data.min_size 16), empty file: 1;" in lines[0], lines[0]
    listed = json.loads((proj / "data/prepared.rejected.json").read_text())["rejected"]
    assert sorted(r["file"] for r in listed) == [
        "A/small0.png",
        "A/small1.png",
        "A/small2.png",
        "B/empty.png",
    ]
    assert not (proj / "data/prepared").exists()


def test_the_gray32_preset_prepares_every_letter(tmp_path, letters):
    proj = project_on(tmp_path, "gray32", letters)
    r = cli(["prepare", "--quiet"], cwd=proj)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((proj / "data/prepared/manifest.json").read_text())
    assert (manifest["num_images"], manifest["num_classes"], manifest["rejected"]) == (LETTERS, CLASSES, [])
    assert manifest["class_names"] == [chr(ord("A") + c) for c in range(CLASSES)]
    images = np.load(proj / "data/prepared/images.npy", mmap_mode="r")
    assert images.shape == (LETTERS, 1, 32, 32)
    assert not (proj / "data/prepared.rejected.json").exists()


def test_gray32_is_small_grayscale_without_flips_at_the_demo_width():
    p, demo = load_params(PRESETS / "gray32.yaml"), load_params(REPO / "params.yaml")
    assert (p.data.resolution, p.data.channels, p.data.hflip) == (32, 1, False)
    assert p.data.min_size <= 28 < 32  # 28-px letters are upsampled, not rejected
    assert (p.model.g_ch, p.model.d_ch, p.train.batch_size) == (demo.model.g_ch, demo.model.d_ch, 32)
    assert p.train.steps == demo.train.steps and p.eval.num_samples == demo.eval.num_samples  # CPU-sized


def test_init_help_and_the_preset_docs_name_gray32():
    r = cli(["init", "--help"], cwd=REPO)
    assert r.returncode == 0 and "gray32" in r.stdout
    assert "`gray32`" in (REPO / "docs/presets.md").read_text()


def test_a_look_at_unreadable_or_hostile_data_is_one_line_and_never_an_error(tmp_path):
    from pipelines.project import catalog

    garbage = tmp_path / "bad.tar.gz"
    garbage.write_bytes(b"\x1f\x8b not really gzip " * 10)
    fifo_folder = tmp_path / "imgs"
    (fifo_folder / "A").mkdir(parents=True)
    os.mkfifo(fifo_folder / "A/x.png")  # opening it would block: the listing refuses it unopened
    folder64 = load_params(PRESETS / "folder64.yaml")
    for data, cause in ((garbage, "cannot read archive"), (fifo_folder, "FIFO")):
        seen = catalog.look_at(data)
        assert isinstance(seen, str) and cause in seen, seen
        said = catalog.line(seen, "folder64", folder64, picked=True)
        assert said.startswith("could not look at the images: ") and "\n" not in said
        assert said.endswith("; preset folder64 (the default)"), said
    junk = tmp_path / "junk/A"
    junk.mkdir(parents=True)
    (junk / "a.png").write_bytes(b"not an image")
    (junk / "b.png").write_bytes(b"")
    seen = catalog.look_at(junk.parent)
    assert not isinstance(seen, str) and seen.unreadable == 2 and seen.sizes == []
    assert catalog.pick(seen) == ("folder64", "the default")
