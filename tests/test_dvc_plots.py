"""The DVC plots of dvc.yaml (this repository's and the `sagan init` template's: the same): losses,
img/s, in-training KID/FID and the sample grids, and the small CSV of in-training scores the trainer
writes for them. `dvc plots show` on a really trained project: tests/test_init_e2e.py."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO
from PIL import Image

from pipelines.project.create import TEMPLATES
from sagan_core.train.progress import MetricsCSV

pytestmark = pytest.mark.unit

PLOTS = {"losses", "discriminator", "throughput", "kid", "fid"}


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_in_training_scores_get_a_dense_csv_of_their_own_kept_across_resume(tmp_path):
    fields = ["step", "loss_d", "img_per_s", "kid", "kid_std", "fid"]
    log = MetricsCSV(tmp_path / "metrics/train.csv", fields)
    log.on_start({"start_step": 0})
    for step in (1, 2, 3, 4):
        scores = {"kid": 0.5 / step, "kid_std": 0.01, "fid": 100.0 / step} if step % 2 == 0 else {}
        log.on_metrics(step, {"loss_d": 1.0, "img_per_s": 10.0, **scores})
    log.close()
    assert [r["step"] for r in rows(tmp_path / "metrics/train.csv")] == ["1", "2", "3", "4"]
    dense = rows(tmp_path / "metrics/train_eval.csv")
    assert dense == [
        {"step": "2", "kid": "0.25", "kid_std": "0.01", "fid": "50"},
        {"step": "4", "kid": "0.125", "kid_std": "0.01", "fid": "25"},
    ]
    resumed = MetricsCSV(tmp_path / "metrics/train.csv", fields)
    resumed.on_start({"start_step": 3})  # rows after the resumed step go, in both files
    resumed.close()
    assert [r["step"] for r in rows(tmp_path / "metrics/train_eval.csv")] == ["2"]
    off = MetricsCSV(tmp_path / "other/train.csv", ["step", "loss_d"])  # evaluation off: no second file
    off.on_start({"start_step": 0})
    off.close()
    assert not (tmp_path / "other/train_eval.csv").exists()


def test_the_repo_and_the_template_declare_the_same_plots():
    repo = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    template = yaml.safe_load((TEMPLATES / "dvc.yaml.template").read_text())["plots"]
    assert repo == template
    names = {next(iter(p)) if isinstance(p, dict) else p for p in repo}
    assert names == PLOTS | {"samples"}


def rendered(project: Path) -> dict:
    r = subprocess.run(
        [sys.executable, "-m", "dvc", "plots", "show", "--json"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def assert_all_plots_render(project: Path) -> None:
    """`dvc plots show --json`: every curve has data points, and the sample grids are image plots."""
    shown = rendered(project)
    assert not shown.get("errors"), shown.get("errors")
    data = shown["data"]
    for name in PLOTS:
        (plot,) = data[name]
        assert plot["type"] == "vega" and plot["content"]["data"]["values"], name
    images = [k for k, v in data.items() if k.startswith("samples/") and v[0]["type"] == "image"]
    assert any(Path(k).name.startswith("step_") for k in images), sorted(data)


@pytest.mark.e2e
def test_dvc_plots_show_renders_every_plot_of_the_template(tmp_path):
    """The template's plot definitions against files shaped like the trainer's (no training here)."""
    project = tmp_path / "proj"
    (project / "metrics").mkdir(parents=True)
    (project / "samples").mkdir()
    (project / "dvc.yaml").write_text(
        "plots:\n" + (TEMPLATES / "dvc.yaml.template").read_text().split("\nplots:\n", 1)[1]
    )
    (project / "metrics/train.csv").write_text(
        "step,loss_d,loss_g,d_real,d_fake,img_per_s,kid,kid_std,fid\n"
        "1,1.9,0.1,0.2,-0.1,50,,,\n2,1.8,0.2,0.3,-0.2,55,0.1,0.01,90\n"
    )
    (project / "metrics/train_eval.csv").write_text("step,kid,kid_std,fid\n2,0.1,0.01,90\n")
    Image.new("RGB", (8, 8)).save(project / "samples/step_000002.png")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    assert_all_plots_render(project)
