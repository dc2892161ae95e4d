"""DVC: the project's dvc.yaml reproduces, is a no-op when nothing changed, reruns only what a param
touches, and its data round-trips through an S3-compatible remote (moto's server on 127.0.0.1).

One pipeline run is shared by the module (stages are slow on 2 CPU cores): the tests run in order
and the param-change test, which mutates the project, comes last.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import BIN, REPO, dvc, git, sh, tiny_overrides

pytestmark = pytest.mark.e2e

OUTPUTS = ["data/prepared/images.npy", "data/prepared/labels.npy", "data/prepared/manifest.json"]
OUTPUTS += ["models/checkpoint.pt"]


def ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def env(standin_torch_home) -> dict:
    return os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # the stages call `sagan`
        "TORCH_HOME": str(standin_torch_home),
        "SAGAN_TRACKING": "0",  # MLflow is not what these tests are about
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }


@pytest.fixture(scope="module")
def project(tmp_path_factory, env) -> Path:
    """A fresh clone's worth of the project (dvc.yaml, params.yaml, the code deps), run once."""
    root = tmp_path_factory.mktemp("dvcproj")
    shutil.copy(REPO / "dvc.yaml", root)
    shutil.copy(REPO / ".gitignore", root)  # outputs are ignored by git, as in the real repo
    shutil.copytree(REPO / "sagan_core", root / "sagan_core", ignore=shutil.ignore_patterns("__pycache__"))
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in tiny_overrides().items():
        raw[section].update(values)
    # Tiny but valid protocols: seconds per stage, not minutes, on 2 CPU cores.
    raw["eval"].update(num_samples=20, batch_size=20, reference_size=32, kid_subsets=5, kid_subset_size=8)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    git(["init", "-q"], root, env)
    dvc(["init", "-q"], root, env)
    git(["add", "-A"], root, env)
    git(["commit", "-qm", "project"], root, env)
    r = dvc(["repro"], root, env)
    assert ran(r.stdout) == {"prepare", "train", "evaluate"}, r.stdout
    git(["add", "-A"], root, env)
    git(["commit", "-qm", "first run"], root, env)
    return root


def test_repro_runs_everything_then_nothing_and_status_is_clean(project, env):
    for out in OUTPUTS + ["metrics/eval.json", "metrics/train.csv", "dvc.lock"]:
        assert (project / out).is_file(), out
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "train", "evaluate"}
    # Only the keys each stage reads are recorded as its params.
    assert set(lock["stages"]["prepare"]["params"]["params.yaml"]) <= {
        f"data.{k}"
        for k in [
            "source",
            "resolution",
            "channels",
            "max_rejected_fraction",
            "min_size",
            "max_pixels",
            "prepared_dir",
        ]
    }  # noqa: E501
    assert "train" not in lock["stages"]["prepare"]["params"]["params.yaml"]
    r = dvc(["repro"], project, env)
    assert ran(r.stdout) == set() and "up to date" in r.stdout
    assert "up to date" in dvc(["status"], project, env).stdout
    # Re-running a stage through the CLI (as the Prefect flow does) reproduces identical outputs.
    sh([str(BIN / "sagan"), "prepare", "--quiet"], project, env)
    assert "up to date" in dvc(["status"], project, env).stdout


def test_metrics_and_plots_show(project, env):
    shown = json.loads(dvc(["metrics", "show", "--json"], project, env).stdout)
    metrics = json.dumps(shown)
    assert '"fid"' in metrics
    r = dvc(["plots", "show", "--json"], project, env)
    plots = json.loads(r.stdout)["data"]
    assert {"losses", "discriminator"} <= set(plots)
    points = plots["losses"][0]["content"]["data"]["values"]
    steps = {int(p["step"]) for p in points}
    assert steps == set(range(1, tiny_overrides()["train"]["steps"] + 1))  # log_every = 1
    assert {p["field"] for p in points} == {"loss_d", "loss_g"}


def test_push_pull_round_trip_through_s3(project, env, tmp_path):
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3env = env | {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        ).create_bucket(Bucket="sagan-dvc")
        dvc(["remote", "add", "-f", "-d", "s3", "s3://sagan-dvc/store"], project, s3env)
        dvc(["remote", "modify", "s3", "endpointurl", endpoint], project, s3env)
        git(["add", ".dvc/config"], project, s3env)
        git(["commit", "-qm", "s3 remote"], project, s3env)
        r = dvc(["push"], project, s3env)
        assert "pushed" in r.stdout.lower() or "files" in r.stdout.lower()

        clone = tmp_path / "clone"
        git(["clone", "-q", str(project), str(clone)], tmp_path, s3env)
        assert not (clone / "models/checkpoint.pt").exists()  # outputs are not in git
        dvc(["pull"], clone, s3env)
        for out in OUTPUTS:
            assert (clone / out).read_bytes() == (project / out).read_bytes(), out
        assert "up to date" in dvc(["status"], clone, s3env).stdout
    finally:
        server.stop()


def test_param_change_reruns_train_and_evaluate_but_not_prepare(project, env):
    before = (project / "models/checkpoint.pt").read_bytes()
    prepared = (project / "data/prepared/images.npy").stat().st_mtime_ns
    r = dvc(["exp", "run", "-S", "train.lr_g=0.0003"], project, env)
    assert ran(r.stdout) == {"train", "evaluate"}, r.stdout
    assert (project / "data/prepared/images.npy").stat().st_mtime_ns == prepared
    assert (project / "models/checkpoint.pt").read_bytes() != before
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["lr_g"] == 0.0003
    diff = json.loads(dvc(["metrics", "diff", "--all", "--json"], project, env).stdout)
    assert "metrics/eval.json" in diff and "fid" in diff["metrics/eval.json"]
    assert "0.0003" in dvc(["exp", "show", "--no-pager", "--csv"], project, env).stdout
