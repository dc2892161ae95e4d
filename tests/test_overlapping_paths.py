"""Settings that would make prepare delete the user's images: an output that is, contains or lies
inside data.source is exit 2 naming both keys, and prepare never replaces a folder holding files it
did not write (issue 31: `--set data.prepared_dir=data` with images in data/raw/images deleted them)."""

from __future__ import annotations

import pytest
from helpers import cli, image_folder

from sagan_core.config import Params
from sagan_core.data.prepare import prepare
from sagan_core.errors import SaganError

pytestmark = pytest.mark.unit


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize(
    ("setting", "relation"),
    [
        ("data.prepared_dir=data", "contains"),
        ("data.prepared_dir=data/raw/images", "is"),
        ("data.prepared_dir=data/raw/images/prepared", "lies inside"),
        ("train.out_dir=data/raw", "contains"),
        ("train.samples_dir=data/raw/images/samples", "lies inside"),
        ("eval.cache_dir=.", "contains"),
    ],
)
def test_an_output_overlapping_the_images_is_exit_2_and_the_images_stay(tmp_path, setting, relation):
    images = image_folder(tmp_path / "data/raw/images", per_class=3)
    before = _files(images)
    (tmp_path / "params.yaml").write_text("data: {source: data/raw/images}\n")
    r = cli(["prepare", "--set", setting], tmp_path)
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    key = setting.split("=")[0]
    assert line.startswith(f"sagan: error: {key}: got ") and f"which {relation} data.source" in line, line
    assert _files(images) == before


def test_prepare_never_replaces_a_folder_holding_files_it_did_not_write(tmp_path):
    images = image_folder(tmp_path / "images", per_class=3)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    cfg = Params.model_validate({"data": {"source": str(images), "prepared_dir": str(mine)}}).data
    with pytest.raises(SaganError, match=r"holds files sagan did not write \(thesis.tex\)"):
        prepare(cfg, progress=False)
    assert (mine / "thesis.tex").read_text() == "years of work" and _files(mine) == ["thesis.tex"]

    (tmp_path / "a-file").write_text("not a folder")
    cfg = Params.model_validate(
        {"data": {"source": str(images), "prepared_dir": str(tmp_path / "a-file")}}
    ).data
    with pytest.raises(SaganError, match="not a folder"):
        prepare(cfg, progress=False)
    assert (tmp_path / "a-file").read_text() == "not a folder"
