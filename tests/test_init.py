"""`sagan init DIR`: a new project anywhere, from the presets and the dvc.yaml template shipped in the
package; the recorded sagan version; `sagan pipeline run --params FILE` in a DVC project. Projects are
made in tmp_path, outside the repository. The end-to-end runs: tests/test_init_e2e.py."""

from __future__ import annotations

import html
import shlex
from pathlib import Path

import pytest
import yaml
from helpers import REPO, letters_archive
from markdown_it import MarkdownIt

from pipelines.cli import main as cli
from pipelines.project import version
from pipelines.project.catalog import PRESETS_DIR
from sagan_core.params_file import load_params

pytestmark = pytest.mark.unit


def images(folder: Path, classes: int = 2, per_class: int = 3) -> Path:
    from PIL import Image

    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (32, 32), (40 * c, 20 * i, 90)).save(folder / f"class{c}/{i}.jpg")
    return folder


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sagan: error: "), err
    return err[0]


@pytest.mark.integration
def test_init_makes_a_project_outside_the_repo_on_images_outside_it(tmp_path, capsys):
    data = images(tmp_path / "my_images <b>x</b>")  # names shown as themselves in README.md
    proj = tmp_path / "work/it's $(proj)"  # ... and quoted in the printed `cd` line
    assert cli.main(["init", str(proj), "--preset", "folder64", "--data", str(data)]) == 0, (
        capsys.readouterr()
    )
    command = capsys.readouterr().out.splitlines()[-1].removeprefix("next:").split("   (README")[0]
    assert shlex.split(command) == ["cd", str(proj), "&&", "sagan", "pipeline", "run"]
    names = {p.name for p in proj.iterdir()}
    assert {"params.yaml", "dvc.yaml", "sagan-version.yaml", ".gitignore", ".dvcignore", "README.md"} <= names
    assert {".git", ".dvc"} <= names  # git init + dvc init
    params = load_params(proj / "params.yaml")
    assert params.data.source == str(data.resolve())  # outside the project: absolute
    assert params.data.resolution == 64  # the preset's, comments kept:
    assert "Source expectations:" in (proj / "params.yaml").read_text()
    spec = yaml.safe_load((proj / "dvc.yaml").read_text())
    assert "${data.source}" in spec["stages"]["prepare"]["deps"]  # the images themselves
    for stage in spec["stages"].values():  # the sagan version, not sagan's source files
        assert {"sagan-version.yaml": ["sagan_version"]} in stage["params"]
        assert not any("sagan_core" in d for d in stage.get("deps", []))
    assert version.recorded(proj) == version.installed()
    repo_spec = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert spec["plots"] == repo_spec["plots"]  # the same plots as the demo project
    readme = MarkdownIt("commonmark").enable("table").render((proj / "README.md").read_text())
    assert "sagan pipeline run" in readme and "dvc plots show" in readme and "<b>" not in readme
    assert f"<code>{html.escape(str(data.resolve()), quote=False)}</code>" in readme
    assert f"<h1>{html.escape(proj.name, quote=False)}</h1>" in readme
    # DVC must see the images: never ignored by .dvcignore
    assert "data/raw" not in "".join(
        line for line in (proj / ".dvcignore").read_text().splitlines() if not line.startswith("#")
    )


@pytest.mark.integration
def test_data_inside_the_project_is_a_relative_source(tmp_path, capsys, monkeypatch):
    proj = tmp_path / "proj"
    images(proj / "data/raw/faces")
    monkeypatch.chdir(proj)  # DIR is `.`, a folder that already holds the images
    assert cli.main(["init", ".", "--preset", "cifar10", "--data", "data/raw/faces"]) == 0, (
        capsys.readouterr()
    )
    assert load_params("params.yaml").data.source == "data/raw/faces"
    ignored = (proj / ".gitignore").read_text().splitlines()
    assert "/data/raw/" in ignored  # in git only as DVC's hash, never the images themselves


@pytest.mark.integration
def test_the_registered_model_and_experiment_are_named_after_the_project_folder(tmp_path, capsys):
    """Issue 32: not the preset's `sagan-cifar10` for everyone's project; MLflow's rules kept."""
    archive = letters_archive(tmp_path / "letters.tar.gz", classes=2, per_class=1)
    for folder, name in (("letters", "letters"), ("my letters: v2/", "my-letters-v2")):
        proj = tmp_path / folder
        assert cli.main(["init", str(proj), "--preset", "cifar10", "--data", str(archive)]) == 0, (
            capsys.readouterr()
        )
        params = load_params(proj / "params.yaml")
        assert (params.registry.model_name, params.tracking.experiment) == (name, name)
        assert "# best (models/best.pt" in (proj / "params.yaml").read_text()  # comments kept


@pytest.mark.integration
def test_a_demo_or_torchvision_source_has_no_path_dependency(tmp_path, capsys):
    preset = tmp_path / "tv.yaml"
    text = (
        (PRESETS_DIR / "cifar10.yaml")
        .read_text()
        .replace("source: data/raw/cifar10", "source: torchvision:CIFAR10")
    )
    preset.write_text(text)
    assert cli.main(["init", str(tmp_path / "proj"), "--preset", str(preset)]) == 0, capsys.readouterr()
    spec = yaml.safe_load((tmp_path / "proj/dvc.yaml").read_text())
    assert "deps" not in spec["stages"]["prepare"]
    assert "data.source" in spec["stages"]["prepare"]["params"]
    # a params file of one's own (not a packaged preset) keeps the names its author gave
    assert load_params(tmp_path / "proj/params.yaml").registry.model_name == "sagan-cifar10"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--preset", "cifar100"],
            "--preset cifar100: no such preset (known: cifar10, folder64, gray32, imagenet128)",
        ),
        (["--data", "nowhere"], "--data nowhere: no such file or folder"),
        (
            ["--data", "notes.txt"],
            "--data notes.txt: expected a folder of images or a .tar/.tar.gz/.zip archive",
        ),
    ],
)
def test_init_mistakes_exit_2_with_one_line_and_write_nothing(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    Path("notes.txt").write_text("not images")
    assert cli.main(["init", "proj", *args]) == 2
    assert message in one_error_line(capsys)
    assert not Path("proj").exists()


def test_init_refuses_a_folder_that_has_a_params_yaml(tmp_path, capsys):
    (tmp_path / "params.yaml").write_text("train:\n  steps: 3\n")
    assert cli.main(["init", str(tmp_path)]) == 2
    assert "params.yaml exists: add --force" in one_error_line(capsys)
    assert (tmp_path / "params.yaml").read_text() == "train:\n  steps: 3\n"
    assert not (tmp_path / "dvc.yaml").exists()


def test_version_is_recorded_checked_and_synced(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    version.check(".")  # no sagan-version.yaml (this repository, older projects): not checked
    assert version.sync(".") is None
    version.write(".", "0.0.1")
    (tmp_path / "params.yaml").write_text("train:\n  steps: 3\n")
    assert cli.main(["prepare"]) == 2  # what `dvc repro` runs refuses the other version...
    assert "made by sagan '0.0.1'" in (line := one_error_line(capsys)) and "sagan init . --upgrade" in line
    assert cli.main(["init", ".", "--upgrade"]) == 0  # ...until the upgrade is recorded
    assert f"0.0.1 -> {version.installed()}" in capsys.readouterr().out
    assert version.recorded(".") == version.installed()
    version.write(".", "0.0.1")
    assert "0.0.1 -> " in version.sync(".")  # what the flow does before asking DVC
    assert version.recorded(".") == version.installed()
    (tmp_path / "sagan-version.yaml").unlink()
    assert cli.main(["init", ".", "--upgrade"]) == 2
    assert "no sagan-version.yaml" in one_error_line(capsys)


def test_pipeline_run_on_another_params_file_with_dvc_yes_is_refused_before_prefect(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    Path("dvc.yaml").write_text("stages: {}\n")
    Path(".dvc").mkdir()
    Path("params.yaml").write_text("train:\n  steps: 3\n")
    Path("other.yaml").write_text("train:\n  steps: 3\npipeline:\n  dvc: 'yes'\n")
    assert cli.main(["pipeline", "run", "--params", "other.yaml"]) == 2
    line = one_error_line(capsys)
    assert "DVC reads only params.yaml" in line and "sagan init . --preset other.yaml --force" in line


def test_no_text_tells_users_to_run_the_flow_on_a_preset_file_or_shared_data():
    """The presets moved into the package; no doc, preset or config names the old configs/ files or
    a developers-only dataset path as the data to use."""
    texts = [
        REPO / "README.md",
        REPO / "params.yaml",
        REPO / "dvc.yaml",
        *sorted((REPO / "docs").glob("*.md")),
    ]
    texts += sorted(PRESETS_DIR.glob("*.yaml"))
    for path in texts:
        text = path.read_text()
        assert "configs/" not in text, path
        assert "--params configs" not in text and "DVC reads params.yaml; use --set" not in text, path
    for preset in PRESETS_DIR.glob("*.yaml"):
        assert "shared/" not in preset.read_text(), preset
