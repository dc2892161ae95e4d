"""Files sagan writes get the mode a plain open() would give them under the user's umask (the atomic
writer's temp files are 0600 and prepare's build folder 0700 until they are made so): a team sharing
a project reads each other's checkpoints and data (issue 31: everything was 0600 under umask 022)."""

from __future__ import annotations

import os
import stat

import pytest
from helpers import image_folder

from sagan_core.atomic import write_atomic
from sagan_core.config import Params
from sagan_core.data.prepare import prepare

pytestmark = pytest.mark.unit


@pytest.fixture
def umask():
    """Set the process umask for the test; the previous one is put back."""
    before = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(before)


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "file_mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, file_mode):
    umask(mask)
    write_atomic(tmp_path / "f.bin", lambda f: f.write(b"x"))
    assert mode(tmp_path / "f.bin") == file_mode


@pytest.mark.integration  # prepare decodes in worker processes
def test_the_prepared_dataset_follows_the_umask(tmp_path, umask):
    umask(0o022)
    images = image_folder(tmp_path / "images", per_class=3)
    out = tmp_path / "data/prepared"
    prepare(
        Params.model_validate({"data": {"source": str(images), "prepared_dir": str(out)}}).data,
        progress=False,
    )
    assert mode(out) == 0o755
    assert {p.name: mode(p) for p in out.iterdir()} == dict.fromkeys(
        ["images.npy", "labels.npy", "manifest.json"], 0o644
    )
