"""A disk that fills up under a stage command: one line naming the path and ENOSPC, no traceback,
exit 1, and what was there before is kept (docs/reliability.md).

The disk fills for real: the command runs in a private mount namespace (`unshare --mount
--map-root-user`, no privilege needed outside it) where one folder of the project is a tmpfs holding
a copy of its files and a few bytes of room. Nothing outside the command sees that mount; when it
ends, the folder's final contents are copied back for the test to look at. Those tests start the
command (integration); the unit tests below have the kernel refuse writes in this process instead
(RLIMIT_FSIZE: EFBIG), for the writers' own handling.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, cli, flat_overrides, project_params, tiny_overrides

from sagan_core.errors import SaganError
from sagan_core.train.progress import MetricsCSV
from sagan_core.train.trainer import train

pytestmark = pytest.mark.e2e  # sagan in a subprocess, in a private mount namespace

PAGE = 4096  # tmpfs counts whole pages
UNSHARE = ["unshare", "--mount", "--map-root-user"]

# $1 size, $2 the folder, $3 where its files wait; then the command. The folder's contents at the
# end replace $3 (cp after the command: the full tmpfs only has to be read).
_SCRIPT = """
mount -t tmpfs -o size="$1" tmpfs "$2" && cp -a "$3/." "$2/" || exit 99
dir=$2; kept=$3; shift 3
"$@"; rc=$?
rm -rf "$kept" && cp -a "$dir" "$kept" || exit 98
exit $rc
"""


@functools.cache
def mount_namespaces() -> None:
    """These tests need a private mount namespace; where none can be made they fail, never skip:
    CI runs in the same kind of container as development."""
    r = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"`unshare --mount --map-root-user` does not work here: {r.stderr.strip()}")


def on_a_full_disk(project: Path, folder: str, free: int, args: list[str], env: dict | None = None):
    """`sagan ARGS` in `project` with `folder` on a tmpfs holding a copy of its files and `free` bytes
    of room; afterwards `folder` holds what the tmpfs held when the command ended."""
    mount_namespaces()
    target, waiting = project / folder, project / f".{folder}.waiting"
    target.rename(waiting)
    target.mkdir()
    used = sum(-(-p.stat().st_size // PAGE) * PAGE for p in waiting.rglob("*") if p.is_file())
    size = used + -(-free // PAGE) * PAGE
    sagan = [sys.executable, "-m", "pipelines.cli", *args]
    full_env = os.environ | {"PYTHONPATH": str(REPO)} | (env or {})
    cmd = [*UNSHARE, "sh", "-c", _SCRIPT, "sh", str(size), str(target), str(waiting), *sagan]
    r = subprocess.run(cmd, cwd=project, env=full_env, capture_output=True, text=True, timeout=300)
    assert r.returncode not in (98, 99), r.stderr  # the tmpfs itself failed
    target.rmdir()
    waiting.rename(target)
    return r


def failed_in_one_line(r, folder: Path, cause: str = "(ENOSPC: No space left on device)") -> str:
    """Exit 1, stderr ending in one `sagan: <path in folder>: could not write ... <cause>` line and no
    traceback (the other lines are the command's progress log); returns the path."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and not any(line.startswith(" ") for line in lines), r.stderr
    assert [line for line in lines if line.startswith("sagan: ")] == lines[-1:], r.stderr
    path = lines[-1].removeprefix("sagan: ").split(": could not write")[0]
    assert Path(path).parent == folder, lines[-1]
    assert cause in lines[-1], lines[-1]
    return path


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def temps(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


# The tiny model trained_demo was trained with, resumed for two more steps.
RESUME = [
    "train",
    "--resume",
    *[a for kv in flat_overrides(tiny_overrides(train__steps=4)) for a in ("--set", kv)],
]


def test_disk_full_while_checkpointing_keeps_the_old_one(trained_project):
    models = trained_project / "models"
    before = digests(models)
    room = (models / "checkpoint.pt").stat().st_size // 2  # the new checkpoint cannot fit
    r = on_a_full_disk(trained_project, "models", room, RESUME)
    assert failed_in_one_line(r, Path("models")) == "models/checkpoint.pt"
    assert "the previous file is unchanged" in r.stderr
    assert digests(models) == before and temps(models) == []


def test_disk_full_while_writing_a_sample_grid_keeps_the_old_ones(trained_project):
    samples = trained_project / "samples"
    before = digests(samples)
    r = on_a_full_disk(trained_project, "samples", 16 * 1024, RESUME)  # a grid is ~170 kB
    assert failed_in_one_line(r, Path("samples")).endswith(".png")
    assert digests(samples) == before and temps(samples) == []


def test_disk_full_while_preparing_keeps_the_old_dataset(trained_project):
    data = trained_project / "data"
    before = digests(data / "prepared")
    r = on_a_full_disk(trained_project, "data", 64 * 1024, ["prepare"])  # the demo's images are 10 MB
    assert failed_in_one_line(r, Path("data")) == "data/prepared"
    assert "the previous dataset is unchanged" in r.stderr
    assert digests(data / "prepared") == before
    assert [p.name for p in data.iterdir()] == ["prepared"]  # the half-built one is gone


def test_disk_full_while_writing_eval_json_keeps_the_old_one(trained_project, standin_torch_home):
    # the fewest samples evaluate takes; the first run caches the reference statistics for the second
    small = {"device": "cpu", "num_samples": 10, "reference_size": 10, "kid_subset_size": 5, "dims": 64}
    sets = ["-q", *[a for kv in flat_overrides({"eval": small}) for a in ("--set", kv)]]
    env = {"TORCH_HOME": str(standin_torch_home)}
    first = cli(["evaluate", *sets], trained_project, env)
    assert first.returncode == 0, first.stderr
    metrics = trained_project / "metrics"
    before = digests(metrics)
    assert {"eval.json", "eval.record.json"} <= before.keys()
    r = on_a_full_disk(trained_project, "metrics", 0, ["evaluate", *sets], env)
    assert failed_in_one_line(r, Path("metrics")) in ("metrics/eval.json", "metrics/eval.record.json")
    assert digests(metrics) == before and temps(metrics) == []


def test_disk_full_under_the_mlflow_store_is_one_line(trained_project):
    (trained_project / "mlflow").mkdir()
    env = {"SAGAN_TRACKING": "1", "MLFLOW_TRACKING_URI": "sqlite:///mlflow/mlflow.db"}
    r = on_a_full_disk(trained_project, "mlflow", 64 * 1024, RESUME, env)  # a new store needs ~1 MB
    path = failed_in_one_line(r, Path("mlflow"), "(sqlite: database or disk is full)")
    assert path == "mlflow/mlflow.db"
    assert "step 3/4" not in r.stderr  # found when the store is opened, before training


# ---- in process: the kernel refuses a write (RLIMIT_FSIZE) -----------------------------------------
@contextlib.contextmanager
def files_limited_to(size: int):
    """The kernel refuses to grow any file of this process past `size` bytes (RLIMIT_FSIZE): a write
    fails with EFBIG, like a full disk's ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the process is killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.mark.unit
def test_a_refused_checkpoint_write_keeps_the_old_one(trained_project):
    """torch.save's zip writer reports the refused write as RuntimeError("unexpected pos"); the
    message still names the file and the errno, in process (the CLI in its process: above)."""
    path = trained_project / "models/checkpoint.pt"
    before = path.read_bytes()
    with files_limited_to(len(before) // 2), pytest.raises(SaganError) as e:
        train(project_params(trained_project, train__steps=4), resume=True, progress=False)
    msg = str(e.value)
    assert msg == f"{path}: could not write (EFBIG: File too large); the previous file is unchanged", msg
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.unit
def test_a_refused_metrics_row_is_cut_back_and_the_rows_before_kept(tmp_path):
    path = tmp_path / "train.csv"
    metrics = MetricsCSV(path, ["step", "loss_d"])
    metrics.on_start({"start_step": 0})
    metrics.on_metrics(1, {"loss_d": 1.0})
    whole = path.read_bytes()
    try:
        with files_limited_to(len(whole) + 3), pytest.raises(SaganError) as e:  # 3 bytes of the row fit
            metrics.on_metrics(2, {"loss_d": 2.0})
    finally:
        metrics.close()
    assert str(e.value) == f"{path}: could not write (EFBIG: File too large); the rows before step 2 are kept"
    assert path.read_bytes() == whole  # no half row for a resume to misread
