"""A team's own project, end to end, outside the repository (tmp_path): `sagan init` on a generated
folder of JPEGs, `sagan pipeline run`, then new and changed images rerun prepare and train; and every
packaged preset running the whole pipeline at toy size. Slow: whole stages, a Prefect server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from helpers import REPO, dvc_status, image_folder, jpeg, run_cli
from test_dvc_plots import assert_all_plots_render

from pipelines.project import version
from pipelines.project.create import preset_names

pytestmark = pytest.mark.e2e

UP_TO_DATE = "Data and pipelines are up to date."
# Toy sizes for any preset (their own resolution kept): 32-px images upsampled (data.min_size), a
# width-8 model (attention needs 8 channels), 2 steps with one in-training evaluation at the end, 16-sample FID at 64 dims.
TOY = [
    "data.min_size=16",
    "model.g_ch=8",
    "model.d_ch=8",
    "model.z_dim=16",
    "train.steps=2",
    "train.batch_size=8",
    "train.log_every=1",
    "train.checkpoint_every=2",
    "train.sample_every=2",
    "train.eval_every=2",
    "train.eval_samples=16",
    "train.standing_stats=1",
    "eval.num_samples=16",
    "eval.batch_size=16",
    "eval.dims=64",
    "eval.kid_subsets=2",
    "eval.kid_subset_size=8",
]


def lock(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


def dep_hash(stage: dict, path: str) -> str:
    (dep,) = [d for d in stage["deps"] if d["path"] == path]
    return dep["md5"]


def out_hash(stage: dict, path: str) -> str:
    (out,) = [o for o in stage["outs"] if o["path"] == path]
    return out["md5"]


def test_own_images_project_reruns_prepare_and_train_when_images_change(
    tmp_path, prefect_api, standin_torch_home
):
    assert not tmp_path.is_relative_to(REPO)
    images = image_folder(tmp_path / "team images")
    r = run_cli(["init", "proj", "--preset", "folder64", "--data", str(images)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    proj = tmp_path / "proj"
    env = {"PREFECT_API_URL": prefect_api, "TORCH_HOME": str(standin_torch_home), "SAGAN_TRACKING": "1"}
    sets = [a for o in TOY for a in ("--set", o)]
    first = run_cli(["pipeline", "run", *sets], cwd=proj, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((proj / "data/prepared/manifest.json").read_text())["num_images"] == 24
    assert dvc_status(proj) == UP_TO_DATE
    assert_all_plots_render(proj)  # losses, img/s, in-training KID/FID, sample grids
    before = lock(proj)
    source = str(images.resolve())

    jpeg(images / "class1/new.jpg", seed=7)  # one image added...
    jpeg(images / "class0/03.jpg", seed=8)  # ...and one changed
    pending = dvc_status(proj)
    assert "prepare:" in pending and f"modified:           {source}" in pending

    second = run_cli(["pipeline", "run"], cwd=proj, env=env)  # what a scheduled run does
    assert second.returncode == 0, second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "prepare: up to date" not in log and "train: up to date" not in log
    assert "prepared 25 images" in log and "training from step 0" in log
    after = lock(proj)
    assert dep_hash(after["prepare"], source) != dep_hash(before["prepare"], source)
    assert out_hash(after["prepare"], "data/prepared") != out_hash(before["prepare"], "data/prepared")
    assert out_hash(after["train"], "models/checkpoint.pt") != out_hash(
        before["train"], "models/checkpoint.pt"
    )
    assert dvc_status(proj) == UP_TO_DATE

    # Another sagan version recorded: every stage shows changed until the installed one is recorded.
    version.write(proj, "0.0.1")
    pending = dvc_status(proj)
    assert all(f"{stage}:" in pending for stage in ("prepare", "train", "evaluate"))
    assert run_cli(["init", ".", "--upgrade"], cwd=proj).returncode == 0
    assert dvc_status(proj) == UP_TO_DATE


@pytest.mark.parametrize("preset", [p for p in preset_names() if p != "folder64"])
def test_every_preset_runs_end_to_end_in_a_new_project(
    preset, tmp_path, prefect_api, standin_torch_home, monkeypatch
):
    """folder64 runs end to end in the test above; the other presets here, in process."""
    from pipelines.flow.pipeline import sagan_pipeline

    images = image_folder(tmp_path / "images", per_class=8)
    proj = tmp_path / preset
    made = run_cli(["init", str(proj), "--preset", preset, "--data", str(images)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))
    monkeypatch.setenv("SAGAN_TRACKING", "1")  # register needs the MLflow run (sqlite in the project)
    summary = sagan_pipeline(project_dir=str(proj), overrides=TOY)
    assert summary.step == 2 and summary.trained_steps == 2 and summary.fid >= 0
    assert summary.dvc == "clean" and dvc_status(proj) == UP_TO_DATE
    written = yaml.safe_load((proj / "params.yaml").read_text())  # the preset's, with the toy sizes
    preset_params = yaml.safe_load((REPO / f"pipelines/project/presets/{preset}.yaml").read_text())
    assert written["data"]["resolution"] == preset_params["data"]["resolution"]
    assert written["model"]["g_ch"] == 8 and written["registry"] == preset_params["registry"]


@pytest.mark.unit
@pytest.mark.unit
def test_every_packaged_preset_is_run_end_to_end_by_one_of_these_tests():
    assert "folder64" in preset_names() and len(preset_names()) >= 3


def test_pipeline_run_on_another_params_file_runs_the_stages_without_dvc(tmp_path, prefect_api):
    """`--params FILE` (not the project's params.yaml) in a DVC project: said in one line, and the
    stages run without DVC's skip or record (here prepare runs, and fails on FILE's missing data)."""
    from pipelines.flow.pipeline import StageFailed, sagan_pipeline

    made = run_cli(
        ["init", "proj", "--data", str(image_folder(tmp_path / "images", per_class=2))], cwd=tmp_path
    )
    assert made.returncode == 0, made.stderr
    proj = tmp_path / "proj"
    other = (
        (proj / "params.yaml").read_text().replace(str((tmp_path / "images").resolve()), "data/raw/elsewhere")
    )
    (proj / "other.yaml").write_text(other)
    # The flow run's logger, read where its records pass: Prefect's console handler may hold a
    # stream an earlier test captured, so the console text is not what this test reads.
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    flow_logger = logging.getLogger("prefect.flow_runs")
    flow_logger.addHandler(handler)
    try:
        with pytest.raises(StageFailed, match=r"^stage prepare failed: .*data/raw/elsewhere"):
            sagan_pipeline(params_file="other.yaml", project_dir=str(proj))
    finally:
        flow_logger.removeHandler(handler)
    log = "\n".join(r.getMessage() for r in records)
    assert "--params other.yaml is not this project's params.yaml" in log
    assert "up to date (dvc status)" not in log and not (proj / "dvc.lock").exists()
