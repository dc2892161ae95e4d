"""A data folder can hang nothing (issue 31): a FIFO named y.png or a link x.png -> /dev/zero made
DVC's hashing of the folder block forever (`dvc repro`, and `sagan pipeline run` at prepare's `dvc
status`, holding the project lock); a link out of the folder was read silently. sagan refuses such
a folder in one line before anything reads it (sagan_core/data/safe_folder.py), and an `sagan init`
project's `check` stage runs that refusal first under `dvc repro`, also while another run holds the
project (DVC would otherwise restore run-cached outputs under it)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import BIN, REPO, cli, dvc, image_folder, run_cli

from pipelines.lock import project_lock

pytestmark = pytest.mark.unit


def _plant(kind: str, images: Path, outside: Path) -> str:
    """One hostile entry in the image folder; returns its path relative to the folder."""
    name = {"hidden fifo": "class0/.y.png"}.get(kind, "class0/x.png")
    path = images / name
    if kind in ("fifo", "hidden fifo"):
        os.mkfifo(path)
    elif kind == "link to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "link out of the folder":
        path.symlink_to(next(outside.rglob("*.jpg")))  # a real image the user never gave
    elif kind == "dangling link":
        path.symlink_to(images / "gone.png")
    elif kind == "link to a folder":
        path.symlink_to(images / "class1")
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    return name


WHY = {
    "fifo": "a FIFO (named pipe)",
    "hidden fifo": "a FIFO (named pipe)",
    "link to /dev/zero": "a link leaving the folder (to /dev/zero)",
    "link out of the folder": "a link leaving the folder",
    "dangling link": "a dangling link",
    "link to a folder": "a link to a folder",
    "socket": "a socket",
}


@pytest.mark.parametrize("kind", list(WHY))
def test_prepare_refuses_a_folder_holding_what_dvc_would_block_on(tmp_path, kind):
    images = image_folder(tmp_path / "images", per_class=3)
    outside = image_folder(tmp_path / "elsewhere", per_class=1)
    name = _plant(kind, images, outside)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": {"source": str(images)}}))
    started = time.monotonic()
    r = cli(["prepare", "--quiet"], tmp_path)
    assert time.monotonic() - started < 30
    assert r.returncode == 1, r.stderr
    (line,) = [x for x in r.stderr.strip().splitlines() if x.startswith("sagan:")]
    assert f"data.source {images}: {name} is {WHY[kind]}" in line, line
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "data/prepared").exists()


def _user_env() -> dict[str, str]:
    """A user's shell: the venv's commands (sagan, dvc) on PATH, this checkout's code."""
    return os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(REPO)}


def _init_project(tmp_path: Path) -> Path:
    images = image_folder(tmp_path / "images", per_class=3, size=64)
    r = cli(["init", str(tmp_path / "proj"), "--data", str(images)], tmp_path)
    assert r.returncode == 0, r.stderr
    return tmp_path / "proj"


@pytest.mark.e2e  # dvc and sagan in subprocesses
def test_dvc_repro_and_pipeline_run_refuse_a_fifo_in_seconds_instead_of_hanging(tmp_path, prefect_api):
    proj = _init_project(tmp_path)
    os.mkfifo(tmp_path / "images/class1/y.png")
    env = _user_env()
    # before: blocked in DVC's hashing of the folder until killed (the timeout fails the test)
    r = subprocess.run(
        [str(BIN / "dvc"), "repro"], cwd=proj, env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0
    assert "sagan: data.source" in r.stderr and "class1/y.png is a FIFO (named pipe)" in r.stderr, r.stderr
    assert not (proj / "data/prepared").exists()

    r = run_cli(["pipeline", "run"], proj, env={"PREFECT_API_URL": prefect_api}, timeout=180)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("sagan: stage prepare failed: data.source"), r.stderr
    assert "class1/y.png is a FIFO" in r.stderr.strip().splitlines()[-1]


def _resolution(proj: Path) -> int:
    import json

    return json.loads((proj / "data/prepared/manifest.json").read_text())["resolution"]


@pytest.mark.e2e  # dvc and sagan in subprocesses
def test_dvc_repro_restores_nothing_while_a_run_holds_the_project(tmp_path):
    proj = _init_project(tmp_path)
    env = _user_env()
    params = proj / "params.yaml"
    dvc(["repro", "prepare"], proj, env)  # 64 px: now in DVC's run-cache
    params.write_text(params.read_text().replace("resolution: 64", "resolution: 32"))
    dvc(["repro", "prepare"], proj, env)
    assert _resolution(proj) == 32
    # A `sagan pipeline run` writes its overrides into params.yaml and holds the project lock while
    # its stages run; here the params match the run-cached 64 px run, which DVC restores without
    # running any command (so without the stage commands' lock) unless the check stage stops it.
    params.write_text(params.read_text().replace("resolution: 32", "resolution: 64"))
    with project_lock(proj):
        r = dvc(["repro", "prepare"], proj, env, check=False)
    assert r.returncode != 0
    assert "another sagan run holds the project lock" in r.stderr, r.stderr
    assert "run-cache" not in r.stdout + r.stderr
    assert _resolution(proj) == 32  # untouched under the running stage


@pytest.mark.e2e  # dvc and sagan in subprocesses
def test_pipeline_run_is_refused_before_prefect_starts_its_server(tmp_path):
    proj = _init_project(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    started = time.monotonic()
    with project_lock(proj):
        r = run_cli(["pipeline", "run"], proj, env=env | {"PREFECT_API_URL": ""}, timeout=180)
    took = time.monotonic() - started
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("sagan: another sagan run holds the project lock")
    assert "temporary server" not in r.stderr.lower()  # on main: refused only after it started (~20-50 s)
    assert took < 20, took
