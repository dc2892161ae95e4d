"""Every packaged preset in a new project outside the repository (tmp_path): `sagan init` on a
generated folder of JPEGs (gray32: an archive of 28-px grayscale letters), the whole pipeline at toy
size, its plots rendered. A team's own project retrained on new and changed images is the retraining
journey in tests/test_journeys.py."""

from __future__ import annotations

import logging

import pytest
import yaml
from helpers import INIT_TOY, INIT_UP_TO_DATE, REPO, dvc_status, image_folder, letters_archive, run_cli
from test_dvc_plots import assert_all_plots_render

from pipelines.project.catalog import preset_names

pytestmark = pytest.mark.e2e

UP_TO_DATE = "Data and pipelines are up to date."


@pytest.mark.parametrize("preset", [p for p in preset_names() if p != "folder64"])
def test_every_preset_runs_end_to_end_in_a_new_project(
    preset, tmp_path, prefect_api, standin_torch_home, monkeypatch
):
    """folder64 runs end to end in tests/test_journeys.py (its retraining journey); the other presets
    here, in process, with their plots rendered by `dvc plots show`."""
    from pipelines.flow.pipeline import sagan_pipeline

    if preset == "gray32":  # its own kind of data: small grayscale class folders in an archive (issue 32)
        images = letters_archive(tmp_path / "letters.tar.gz", classes=4, per_class=4)
    else:
        images = image_folder(tmp_path / "images", per_class=8)
    proj = tmp_path / preset
    made = run_cli(["init", str(proj), "--preset", preset, "--data", str(images)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))
    monkeypatch.setenv("SAGAN_TRACKING", "1")  # register needs the MLflow run (sqlite in the project)
    summary = sagan_pipeline(project_dir=str(proj), overrides=INIT_TOY)
    assert summary.step == 2 and summary.trained_steps == 2 and summary.fid >= 0
    assert summary.dvc == "clean" and dvc_status(proj) == INIT_UP_TO_DATE
    assert_all_plots_render(proj)  # losses, img/s, in-training KID/FID, sample grids
    written = yaml.safe_load((proj / "params.yaml").read_text())  # the preset's, with the toy sizes
    preset_params = yaml.safe_load((REPO / f"pipelines/project/presets/{preset}.yaml").read_text())
    assert written["data"]["resolution"] == preset_params["data"]["resolution"]
    assert written["model"]["g_ch"] == 8  # and the project folder's name:
    assert written["registry"] == preset_params["registry"] | {"model_name": preset}
    assert written["tracking"] == preset_params["tracking"] | {"experiment": preset}


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
    assert "dvc status: up to date" not in log and not (proj / "dvc.lock").exists()
