"""benchmarks/cifar_grid.py, the issue-24 grid in one command: a toy grid end to end on a CIFAR-shaped
archive (every run trained as the grid says, scored, tabulated, the montage drawn), then the same
command again (nothing retrained, nothing rescored); and the pool's verdict on a failing run."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO
from PIL import Image

pytestmark = pytest.mark.unit

BENCH = REPO / "benchmarks"
sys.path.insert(0, str(BENCH))
VARIANTS = ("baseline", "diffaug+lecam")
FRACTIONS = ("1.0", "0.5")


@pytest.mark.integration
def test_a_failing_run_is_reported_with_its_log_and_the_others_finish(tmp_path):
    import cifar_grid
    from grid_pool import Job, run_pool

    script = "print('step 1/2', flush=True); import sys; sys.exit({})"
    jobs = [
        Job(
            i + 1,
            2,
            f"run {i}",
            [sys.executable, "-c", script.format(rc)],
            tmp_path,
            tmp_path / f"{i}.log",
            2,
        )
        for i, rc in enumerate((3, 0))
    ]
    for job in jobs:
        job.run = {"name": f"run-{job.index}"}
    lines: list[str] = []
    run_pool(jobs, parallel=2, threads=1, env=dict(os.environ), progress_s=0.0, say=lines.append)
    assert [j.status for j in jobs] == ["failed", "ok"]
    assert jobs[0].returncode == 3 and "step 1/2" in jobs[0].log.read_text()
    verdict = cifar_grid.failure(jobs)
    assert "1 of 2 runs did not finish" in verdict and "run-1 (exit 3)" in verdict
    assert str(jobs[0].log) in verdict and "\n" not in verdict
    assert any("FAILED (exit 3" in line for line in lines)
    assert cifar_grid.failure(jobs[1:]) is None


def _grid(tmp_path, archive):
    cmd = [sys.executable, str(BENCH / "cifar_grid.py"), "--work", str(tmp_path / "grid")]
    cmd += ["--archive", str(archive), "--steps", "2", "--seeds", "0", "--fractions", *FRACTIONS]
    cmd += ["--variants", *VARIANTS, "--samples", "20", "--judge-epochs", "1", "--jobs", "2"]
    cmd += ["--device", "cpu", "--progress-s", "0", "--out", str(tmp_path / "out")]
    env = os.environ | {"PYTHONPATH": str(REPO), "SAGAN_TRACKING": "0"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.e2e  # 4 `sagan train` runs of 2 steps, the judge (1 epoch), scoring: ~1 min on 2 cores
def test_a_toy_grid_runs_end_to_end_and_a_second_invocation_retrains_nothing(tmp_path):
    from cifar_judge import write_toy_archive

    from sagan_core.model.checkpoint import peek

    archive = write_toy_archive(tmp_path / "toy.tar.gz", train_per_class=30, test_per_class=5)
    first = _grid(tmp_path, archive)
    assert first.returncode == 0, first.stderr[-4000:]
    work = tmp_path / "grid"
    result = json.loads((work / "grid.json").read_text())
    names = {f"{v}-s0-f{f}" for v in VARIANTS for f in FRACTIONS}
    assert {r["name"] for r in result["runs"]} == names
    assert {r["status"] for r in result["runs"]} == {"ok"}
    assert len(result["checkpoints"]) == 4
    for row in result["checkpoints"]:
        assert row["step"] == 2 and row["samples"] == 20
        figures = [
            row[k] for k in ("class_accuracy", "judge_fd", "precision", "recall", "density", "coverage")
        ]
        assert all(math.isfinite(v) for v in figures) and 0 <= row["class_accuracy"] <= 1

    # each run trained what the grid says: the baseline's width, its seed, its variant, its data
    for name in names:
        p = peek(work / name / "models/checkpoint.pt")["params"]
        assert (p["model"]["g_ch"], p["train"]["batch_size"], p["train"]["precision"]) == (8, 32, "fp32")
        both = name.startswith("diffaug+lecam")
        assert p["train"]["diffaug"] == ("translation,cutout" if both else "")
        assert p["train"]["lecam_weight"] == (0.3 if both else 0.0)
        assert p["train"]["seed"] == 0 and p["train"]["steps"] == 2
        expected = work / "data-f0.5" if name.endswith("f0.5") else work / "data/prepared"
        assert p["data"]["prepared_dir"] == str(expected)
    # the half subset: 35 images per class in the archive (30 train + 5 test), round(17.5) = 18 kept
    assert np.bincount(np.load(work / "data-f0.5/labels.npy")).tolist() == [18] * 10

    table = (work / "grid.txt").read_text()
    for variant in VARIANTS:
        for fraction in FRACTIONS:
            assert re.search(rf"^{re.escape(variant)}\s+{fraction}\s+1\s", table, re.M), table
    tile = Image.open(work / "baseline-s0-f1.0/samples/latest.png").size
    assert Image.open(work / "montage.png").size == (2 * tile[0] + 3 * 8, 2 * tile[1] + 3 * 8)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["grid.json", "grid.txt", "montage.png", "logs.tar.gz"]
    )

    mtimes = {n: (work / n / "models/checkpoint.pt").stat().st_mtime_ns for n in names}
    again = _grid(tmp_path, archive)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stdout.count("finished earlier (step 2): skipped") == 4
    assert "training 0 of 4 runs" in again.stdout and "scoring" not in again.stdout
    assert {n: (work / n / "models/checkpoint.pt").stat().st_mtime_ns for n in names} == mtimes
    assert json.loads((work / "grid.json").read_text())["checkpoints"] == result["checkpoints"]


@pytest.mark.integration
def test_the_time_budget_stops_unfinished_runs_and_says_so(tmp_path):
    import cifar_grid
    from grid_pool import Job, run_pool

    cmd = [sys.executable, "-c", "import time; print('step 1/9', flush=True); time.sleep(60)"]
    jobs = [Job(i + 1, 2, f"run {i}", cmd, tmp_path, tmp_path / f"{i}.log", 9) for i in range(2)]
    for job in jobs:
        job.run = {"name": f"run-{job.index}"}
    lines: list[str] = []
    run_pool(jobs, parallel=1, threads=1, env=dict(os.environ), budget_s=2.0, say=lines.append)
    assert [j.status for j in jobs] == ["stopped", "stopped"]  # the running one and the queued one
    assert jobs[0].proc.poll() is not None and jobs[1].proc is None
    assert any("time budget of 2 s spent" in line for line in lines)
    assert "2 of 2 runs did not finish" in cifar_grid.failure(jobs) and "stopped" in cifar_grid.failure(jobs)
