"""A newcomer's `sagan init` project on their own small grayscale letters (issue 32), kept in git as
a project template user keeps theirs: runs from a clean commit are tagged clean, what a run writes
stays out of `git add -A`, and a failed run leaves params.yaml as it was. The flow runs in process
(Prefect's temporary server, the stand-in Inception weights), at toy size; one project and two runs
shared by the module's tests. The overrides' types and undo: tests/test_params_writeback.py."""

from __future__ import annotations

import os

import pytest
import yaml
from helpers import INIT_TOY, git, letters_archive, run_cli

from pipelines.flow.params_writeback import write_overrides

pytestmark = pytest.mark.e2e

# Toy sizes (helpers.INIT_TOY) on the cifar10 preset, written into params.yaml and committed: the
# runs below take no --set. train.checkpoint_every=2 writes models/step_000002.pt, eval_every=2 best.pt.
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
GIT_ENV |= {"GIT_COMMITTER_EMAIL": "t@t"}


class Project:
    def __init__(self, root, runs):
        self.root, self.runs = root, runs  # runs: the MLflow training runs, oldest first

    def git(self, *args: str) -> str:
        return git(list(args), self.root, os.environ | GIT_ENV).stdout


@pytest.fixture(scope="module")
def letters(tmp_path_factory, prefect_api, standin_torch_home):
    """`sagan init letters --preset cifar10 --data letters.tar.gz`, the toy sizes committed; run 1
    from that clean commit; everything committed again (dvc.lock, metrics); run 2 with --force (the
    flow rewrites dvc.lock and the metrics, both tracked now)."""
    from mlflow import MlflowClient

    from pipelines.flow.pipeline import sagan_pipeline

    tmp = tmp_path_factory.mktemp("letters")
    archive = letters_archive(tmp / "letters.tar.gz", classes=4, per_class=6)
    made = run_cli(["init", "letters", "--preset", "cifar10", "--data", str(archive)], cwd=tmp)
    assert made.returncode == 0, made.stderr
    root = tmp / "letters"
    write_overrides(root / "params.yaml", INIT_TOY)
    project = Project(root, [])
    project.git("add", "-A")
    project.git("commit", "-qm", "a new project")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(standin_torch_home))
        mp.setenv("SAGAN_TRACKING", "1")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)  # the project's own sqlite:///mlflow.db
        sagan_pipeline(project_dir=str(root))
        project.git("add", "-A")
        project.git("commit", "-qm", "the first run's records")
        sagan_pipeline(project_dir=str(root), force=True)
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    name = yaml.safe_load((root / "params.yaml").read_text())["tracking"]["experiment"]
    experiment = client.get_experiment_by_name(name)  # the folder's name: tests/test_init.py
    found = client.search_runs([experiment.experiment_id], "tags.`sagan.git_dirty` != ''")
    project.runs = sorted(found, key=lambda r: r.info.start_time)
    assert len(project.runs) == 2, [r.data.tags for r in project.runs]
    return project


def test_runs_from_a_clean_commit_are_tagged_clean_though_the_flow_rewrites_tracked_records(
    letters, monkeypatch
):
    from pipelines.tracking.callback import git_commit
    from sagan_core.params_file import load_params

    first, forced = letters.runs
    commits = letters.git("log", "--format=%H").split()
    assert first.data.tags["sagan.git_commit"] == commits[1]  # the commit "a new project"
    assert forced.data.tags["sagan.git_commit"] == commits[0]
    # the forced run rewrote tracked files (what the run made: curves with their timings) ...
    assert "metrics/train.csv" in letters.git("diff", "--name-only", commits[0])
    # ... yet both ran from their commit as it is
    assert first.data.tags["sagan.git_dirty"] == "false"
    assert forced.data.tags["sagan.git_dirty"] == "false"
    # what a run is made from, changed: a --set the flow writes into params.yaml, dvc.yaml edited
    monkeypatch.chdir(letters.root)
    params = load_params("params.yaml")
    assert git_commit(params) == (commits[0], False)
    write_overrides("params.yaml", ["train.lr_g=2e-4"])
    assert git_commit(params) == (commits[0], True)
    letters.git("checkout", "params.yaml")
    with open("dvc.yaml", "a") as f:
        f.write("# a note\n")
    assert git_commit(params) == (commits[0], True)
    letters.git("checkout", "dvc.yaml")


def test_what_a_run_writes_stays_out_of_git_add_but_the_metrics(letters):
    """The first run's `git add -A` committed only small records; the second run adds nothing new."""
    models = letters.root / "models"
    assert {"best.pt", "checkpoint.pt", "step_000002.pt"} <= {p.name for p in models.iterdir()}
    tracked = letters.git("ls-files").splitlines()
    assert not any(p.endswith(".pt") or p.startswith(("models/", "samples/", "data/")) for p in tracked)
    assert all((letters.root / p).stat().st_size < 200_000 for p in tracked), tracked
    kept = {
        "dvc.lock",
        *(f"metrics/{m}" for m in ("eval.json", "eval.record.json", "train.csv", "train_eval.csv")),
    }
    assert kept | {"params.yaml"} <= set(tracked), tracked
    status = letters.git("status", "--porcelain", "--untracked-files=all")
    added = [line.split("'", 2)[1] for line in letters.git("add", "-A", "--dry-run").splitlines()]
    assert ".pt" not in status and added and set(added) <= kept, (status, added)


def test_a_failed_run_leaves_params_yaml_as_it_was(tmp_path, prefect_api):
    """The issue's first run: folder64 (data.min_size 64) on 28-px letters fails at prepare; its
    --set values are not left in params.yaml, byte for byte."""
    from pipelines.flow.pipeline import StageFailed, sagan_pipeline

    archive = letters_archive(tmp_path / "letters.tar.gz", classes=3, per_class=2)
    made = run_cli(["init", "letters", "--preset", "folder64", "--data", str(archive)], cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    params = tmp_path / "letters/params.yaml"
    before = params.read_bytes()
    with pytest.raises(StageFailed, match="^stage prepare failed: .*no valid images"):
        sagan_pipeline(project_dir=str(params.parent), overrides=["train.steps=300", "train.lr_g=2e-4"])
    assert params.read_bytes() == before
    assert not (params.parent / ".sagan/params-run.json").exists()
