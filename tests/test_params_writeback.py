"""`--set` overrides in params.yaml (pipelines/flow/params_writeback.py):
written with their validated types, kept after a run that succeeds, undone after one that fails
(but for the stages it finished), and after a killed run by the next run. Real files: an `sagan
init` project's params.yaml (the cifar10 preset) and dvc.yaml (the template); the flow's own use is
tests/test_init_project_git.py::test_a_failed_run_leaves_params_yaml_as_it_was."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ruamel.yaml import YAML

from pipelines.flow.params_writeback import RECORD, finished, kept_if_done, undo, write, write_overrides
from pipelines.project.catalog import PRESETS_DIR
from pipelines.project.create import dvc_yaml
from sagan_core.params_file import load_params

pytestmark = pytest.mark.unit
SETS = [
    "data.min_size=16",
    "train.steps=300",
    "train.lr_g=2e-4",
    "eval.num_samples=32",
    "pipeline.force=true",
]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    Path("params.yaml").write_text((PRESETS_DIR / "cifar10.yaml").read_text())
    Path("dvc.yaml").write_text(dvc_yaml("data/raw/letters"))
    return tmp_path


def changed_lines(before: str, after: str) -> list[str]:
    return [b for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]


def written(overrides: list[str]) -> None:
    assert write("params.yaml", overrides, load_params("params.yaml", overrides)) and RECORD.exists()


def test_a_set_value_is_written_with_its_validated_type(project):
    before = Path("params.yaml").read_text()
    assert write_overrides("params.yaml", ["train.lr_g=2e-4", "registry.model_name=2e-4"])
    after = Path("params.yaml").read_text()
    for reader in (yaml.safe_load, YAML(typ="safe").load):  # sagan's (YAML 1.1) and DVC's (1.2)
        raw = reader(after)
        assert raw["train"]["lr_g"] == 2e-4 and isinstance(raw["train"]["lr_g"], float)
        assert raw["registry"]["model_name"] == "2e-4"  # a string field stays a string
    # only those two lines change: comments, quotes and the file's `null`s are kept
    assert changed_lines(before, after) == [
        "  lr_g: 0.0002              # TTUR as in the paper: lr_G 1e-4, lr_D 4e-4",
        '  model_name: "2e-4"',
    ]


def test_a_failed_run_keeps_only_the_overrides_of_the_stages_it_finished(project):
    before = Path("params.yaml").read_bytes()
    written(SETS)
    finished("check")
    finished("prepare")  # committed to dvc.lock with data.min_size 16
    with pytest.raises(RuntimeError), kept_if_done():
        raise RuntimeError("train failed")
    Path("expected.yaml").write_bytes(before)
    write_overrides("expected.yaml", ["data.min_size=16"])
    assert Path("params.yaml").read_text() == Path("expected.yaml").read_text()
    assert not RECORD.exists()


def test_a_run_failing_before_any_stage_finished_leaves_the_file_byte_for_byte(project):
    before = Path("params.yaml").read_bytes()
    written(SETS)
    with pytest.raises(KeyboardInterrupt), kept_if_done():
        raise KeyboardInterrupt
    assert Path("params.yaml").read_bytes() == before and not RECORD.exists()


def test_a_killed_runs_overrides_are_undone_by_the_next_run(project):
    before = Path("params.yaml").read_bytes()
    written(SETS)
    finished("prepare")  # then kill -9: kept_if_done never ends
    assert load_params("params.yaml").train.steps == 300
    undo()  # the next run's start
    Path("expected.yaml").write_bytes(before)
    write_overrides("expected.yaml", ["data.min_size=16"])
    assert Path("params.yaml").read_text() == Path("expected.yaml").read_text()
    assert not RECORD.exists()


def test_a_run_that_succeeds_keeps_every_override_but_the_flows_own(project):
    written(SETS)
    with kept_if_done():
        pass
    params = load_params("params.yaml")
    assert (params.data.min_size, params.train.steps, params.eval.num_samples) == (16, 300, 32)
    assert params.train.lr_g == 2e-4 and params.pipeline.force is False and not RECORD.exists()


def test_a_file_edited_during_the_run_is_left_as_it_is(project):
    written(SETS)
    Path("params.yaml").write_text(Path("params.yaml").read_text() + "# my note\n")
    edited = Path("params.yaml").read_bytes()
    with pytest.raises(RuntimeError), kept_if_done():
        raise RuntimeError
    assert Path("params.yaml").read_bytes() == edited


def test_overrides_the_file_already_holds_write_nothing(project):
    assert not write("params.yaml", ["train.steps=100000"], load_params("params.yaml"))
    assert not RECORD.exists()
