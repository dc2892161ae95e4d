"""The three jobs users run, end to end, as they run them: only commands in subprocesses (the
installed `sagan` console script, `dvc`, `prefect`), tracking on (MLflow in the project's
sqlite:///mlflow.db), toy sizes through `--set`, the stand-in Inception weights (TORCH_HOME).

1. Quick start: a fresh `git clone` of this repository (the demo project, as users get it: the
   committed tree) -> `sagan pipeline run` -> `dvc status` clean, `dvc repro` runs nothing, `dvc dag`.
2. Scheduled retraining: `sagan init` on a folder of images, `sagan pipeline serve` against a real
   `prefect server start`, runs triggered with `prefect deployment run`; new and removed images
   rerun prepare and train, and the new version is compared with the champion on equal terms.
3. Promotion by hand: `sagan models list|promote|rollback` on that project's registry; the next
   scheduled run keeps what the person decided.
4. Upgrading sagan: the project shows every stage changed until `sagan init . --upgrade`.
5. A scheduled run that fails (every image broken) says why on the flow run in Prefect and moves
   nothing in the registry.

Slow: a few minutes on 2 cores (five pipeline runs, one Prefect server start).

Longer than 300 lines: journeys 2-4 share one served deployment and its project (the module
fixture); split across modules, the serve process and the first two runs would run once per module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import BIN, INIT_UP_TO_DATE, REPO, dvc, git, image_folder, jpeg, stop_process_group
from prefect_fixtures import wait_for

pytestmark = pytest.mark.e2e
UP_TO_DATE = "Data and pipelines are up to date."
DEPLOYMENT = "sagan-pipeline/scheduled-retrain"  # `sagan pipeline serve`'s default name
# Toy sizes: a width-8 model (attention needs 8 channels), 4 steps, no in-training evaluation,
# FID on 20 generated images against 20 reference images in 64 Inception dimensions.
TOY = [
    "model.g_ch=8",
    "model.d_ch=8",
    "model.z_dim=16",
    "train.steps=4",
    "train.batch_size=8",
    "train.checkpoint_every=4",
    "train.sample_every=4",
    "train.log_every=1",
    "train.eval_every=0",
    "train.standing_stats=1",
    "eval.num_samples=20",
    "eval.reference_size=20",
    "eval.batch_size=20",
    "eval.dims=64",
    "eval.kid_subsets=2",
    "eval.kid_subset_size=10",
]
SETS = [a for o in TOY for a in ("--set", o)]


def user_env(base: dict[str, str], torch_home: Path, **extra: str) -> dict[str, str]:
    """A user's shell: the venv's commands on PATH, this checkout's code, tracking on, no MLflow URI."""
    env = {k: v for k, v in base.items() if not k.startswith("MLFLOW_")}
    env |= {"PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}", "PYTHONPATH": str(REPO)}
    return env | {"TORCH_HOME": str(torch_home), "SAGAN_TRACKING": "1", "COLUMNS": "250"} | extra


def command(
    exe: str, args: list[str], cwd: Path, env: dict, timeout: int = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def sagan(args: list[str], cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    """`sagan ARGS`: the console script the install puts in the venv, as a user types it."""
    return command("sagan", args, cwd, env, timeout)


def tail(r: subprocess.CompletedProcess) -> str:
    return f"exit {r.returncode}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"


# ---- 1. quick start ---------------------------------------------------------------------------------
def test_quick_start_on_a_fresh_clone_then_dvc_finds_everything_recorded(tmp_path, standin_torch_home):
    clone = tmp_path / "sagan"
    no_server = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}  # no PREFECT_API_URL
    env = user_env(no_server, standin_torch_home, PREFECT_HOME=str(tmp_path / "prefect-home"))
    git(["clone", "-q", str(REPO), str(clone)], tmp_path, env)

    run = sagan(["pipeline", "run", *SETS], clone, env, timeout=600)  # Prefect's temporary server
    assert run.returncode == 0, tail(run)
    assert "sagan pipeline: done" in run.stdout, tail(run)
    assert "registered  : sagan-demo version 1 (generator step 4, FID " in run.stdout, tail(run)
    assert "alias champion" in run.stdout, tail(run)

    status = dvc(["status"], clone, env)
    assert status.stdout.strip() == UP_TO_DATE, tail(status)
    repro = dvc(["repro"], clone, env)
    said = repro.stdout + repro.stderr
    for stage in ("prepare", "train", "evaluate"):
        assert f"Stage '{stage}' didn't change, skipping" in said, tail(repro)
    assert "Running stage" not in said and said.strip().endswith(UP_TO_DATE), tail(repro)
    dag = dvc(["dag"], clone, env)
    assert all(f"| {stage} |" in dag.stdout for stage in ("prepare", "train", "evaluate")), tail(dag)


# ---- 2. scheduled retraining ------------------------------------------------------------------------
STAGES = ("prepare", "train", "evaluate", "register")


class Retrained:
    """What the retraining journey did and saw: its project and, after each served run, the run's id,
    the prepared manifest, dvc.lock's stages and the registry (version -> aliases and tags)."""

    def __init__(self, proj: Path, env: dict[str, str]):
        self.proj, self.env = proj, env
        self.serve: subprocess.Popen | None = None  # `sagan pipeline serve`, alive for every test here
        self.log = proj.parent / "serve.log"
        self.model = yaml.safe_load((proj / "params.yaml").read_text())["registry"]["model_name"]
        self.runs: list[str] = []
        self.manifests: list[dict] = []
        self.locks: list[dict] = []
        self.registries: list[dict[int, dict]] = []
        self.pending = ""  # `dvc status` between the image change and the next run

    def record(self, run_id: str) -> None:
        self.runs.append(run_id)
        self.manifests.append(json.loads((self.proj / "data/prepared/manifest.json").read_text()))
        self.locks.append(yaml.safe_load((self.proj / "dvc.lock").read_text())["stages"])
        self.registries.append(registry(self.proj, self.model))

    def trigger(self, until: tuple[str, ...] = ("COMPLETED",)) -> dict:
        """Another run of the served deployment, as the schedule would start it; its flow run."""
        return run_deployment(self.proj, self.env, self.serve, self.log, until)


def registry(proj: Path, name: str) -> dict[int, dict]:
    """Every version of model `name` in the project's MLflow store: {version: {aliases, tags}}."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{proj / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    versions = [
        client.get_model_version(name, mv.version) for mv in client.search_model_versions(f"name='{name}'")
    ]
    return {int(mv.version): {"aliases": sorted(mv.aliases), "tags": dict(mv.tags)} for mv in versions}


def prefect_api(env: dict[str, str], path: str, body: dict | None = None):
    """Prefect's REST API (what its UI reads): GET `path`, or POST `body` to it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        env["PREFECT_API_URL"] + path, data=data, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return json.load(r)


def run_deployment(
    proj: Path,
    env: dict[str, str],
    serve: subprocess.Popen,
    log: Path,
    until: tuple[str, ...] = ("COMPLETED",),
) -> dict:
    """`prefect deployment run` the served deployment and wait until the run ends in a state of
    `until` (another final state fails the test); the flow run as Prefect's API returns it."""
    r = command("prefect", ["deployment", "run", DEPLOYMENT], proj, env)
    assert r.returncode == 0, tail(r)
    (run_id,) = re.findall(r"UUID: ([0-9a-f-]{36})", r.stdout)

    def ended() -> dict | None:
        assert serve.poll() is None, f"sagan pipeline serve exited:\n{log.read_text()[-4000:]}"
        run = prefect_api(env, f"/flow_runs/{run_id}")
        state = run["state"]["type"]
        final = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
        assert state in until or state not in final, f"{state}:\n{log.read_text()[-4000:]}"
        return run if state in until else None

    return wait_for(f"flow run {run_id} to end", ended, timeout=540, every=2)


def change_images(images: Path) -> int:
    """The team adds 10 images and removes 3; returns how many there are now."""
    for i in range(10):
        jpeg(images / f"class{i % 2}/new{i:02d}.jpg", seed=5000 + i, size=64)
    for name in ("class0/00.jpg", "class0/01.jpg", "class1/00.jpg"):
        (images / name).unlink()
    return sum(1 for _ in images.rglob("*.jpg"))


@pytest.fixture(scope="module")
def retrained(tmp_path_factory, prefect_server, standin_torch_home) -> Retrained:
    """`sagan init` a folder64 project on 2 x 12 images, serve it, run the deployment, change the
    images, run it again (the journey's steps; the test below checks what they did). The deployment
    stays served for the tests after it (scheduled runs after a person's decision, a failing run)."""
    root = tmp_path_factory.mktemp("retraining")
    images = image_folder(root / "team images", classes=2, per_class=12, size=64)
    env = user_env(prefect_server, standin_torch_home)
    made = sagan(["init", "proj", "--preset", "folder64", "--data", str(images)], root, env)
    assert made.returncode == 0, tail(made)
    done = Retrained(root / "proj", env)
    log = done.log
    with log.open("w") as out:
        serve = done.serve = subprocess.Popen(
            [str(BIN / "sagan"), "pipeline", "serve", *SETS],
            cwd=done.proj,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:

            def served() -> bool:
                assert serve.poll() is None, f"sagan pipeline serve exited:\n{log.read_text()[-4000:]}"
                return (
                    command("prefect", ["deployment", "inspect", DEPLOYMENT], done.proj, env).returncode == 0
                )

            wait_for("the served deployment", served, timeout=180, every=2)
            done.record(done.trigger()["id"])
            assert change_images(images) == 31
            done.pending = dvc(["status"], done.proj, env).stdout
            done.record(done.trigger()["id"])
            yield done
        finally:
            stop_process_group(serve)


def flow_run_said(r: Retrained, run_id: str) -> str:
    """The run's tasks (all completed) and its log lines, both read back from the Prefect server."""
    tasks = prefect_api(r.env, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    states = {t["name"].rsplit("-", 1)[0]: t["state"]["type"] for t in tasks}
    assert states == dict.fromkeys(STAGES, "COMPLETED"), states
    logs = command("prefect", ["flow-run", "logs", run_id], r.proj, r.env)
    assert logs.returncode == 0, tail(logs)
    return logs.stdout


def test_scheduled_retraining_reruns_on_new_images_and_compares_on_equal_terms(retrained):
    r = retrained
    first, second = (flow_run_said(r, run_id) for run_id in r.runs)
    assert "prepared 24 images" in first and f"{r.model} v1: champion" in first, first[-3000:]
    assert r.registries[0].keys() == {1} and r.registries[0][1]["aliases"] == ["champion"], r.registries[0]

    # DVC saw the changed folder before the run (prepare's dependency; train follows from its output)
    source = yaml.safe_load((r.proj / "params.yaml").read_text())["data"]["source"]
    assert "prepare:" in r.pending and re.search(rf"modified:\s+{re.escape(source)}", r.pending), r.pending
    # the second run prepared and trained again: new images, new data hash, new checkpoint
    assert "prepared 31 images" in second and "training from step 0" in second, second[-3000:]
    assert r.manifests[1]["content_hash"] != r.manifests[0]["content_hash"]
    sources = [d["md5"] for lock in r.locks for d in lock["prepare"]["deps"] if d["path"] == source]
    assert len(sources) == 2 and sources[0] != sources[1], sources
    for stage, out in (("prepare", "data/prepared"), ("train", "models/checkpoint.pt")):
        hashes = [o["md5"] for lock in r.locks for o in lock[stage]["outs"] if o["path"] == out]
        assert len(hashes) == 2 and hashes[0] != hashes[1], (stage, hashes)
    assert dvc(["status"], r.proj, r.env).stdout.strip() == INIT_UP_TO_DATE

    # v2 was compared with the champion on equal terms: v1 was scored against the old images, so
    # the champion was re-scored under v2's protocol (tag fid.<protocol_id>) before the decision
    versions = r.registries[1]
    assert versions.keys() == {1, 2}
    v1, v2 = versions[1]["tags"], versions[2]["tags"]
    old, new = (json.loads(v["protocol"])["reference_content_hash"] for v in (v1, v2))
    assert (old, new) == (r.manifests[0]["content_hash"], r.manifests[1]["content_hash"])
    rescored = v1.get(f"fid.{v2['protocol_id']}")
    assert rescored is not None, f"champion v1 was not re-scored under v2's protocol: {v1}"
    assert "not comparable" not in v2["promotion.reason"], v2["promotion.reason"]
    decision = v2["promotion.decision"]
    assert decision == ("champion" if float(v2["fid"]) < float(rescored) else "challenger"), (v2, rescored)
    assert decision in versions[2]["aliases"]
    assert "champion" in versions[2 if decision == "champion" else 1]["aliases"]


# ---- 3. promotion by hand ---------------------------------------------------------------------------
def test_promotion_by_hand_list_promote_rollback(retrained):
    r = retrained
    env = r.env | {"SAGAN_USER": "Dana Reviewer"}
    before = registry(r.proj, r.model)
    (champion,) = [v for v, mv in before.items() if "champion" in mv["aliases"]]
    other = max(v for v in before if v != champion)

    table = sagan(["models", "list"], r.proj, env)
    assert table.returncode == 0, tail(table)
    # one row per version (its number first, "v2" or "2"; wrapped lines start with a space)
    shown = {
        line.split()[0].removeprefix("v"): line for line in table.stdout.splitlines()[1:] if line[:1].strip()
    }
    assert shown.keys() == {str(v) for v in before} and "champion" in shown[str(champion)], table.stdout
    listed = sagan(["models", "list", "--json"], r.proj, env)
    assert listed.returncode == 0, tail(listed)
    rows = {row["version"]: row for row in json.loads(listed.stdout)}
    assert rows.keys() == before.keys()
    for v, row in rows.items():
        tags = before[v]["tags"]
        assert sorted(row["aliases"]) == before[v]["aliases"] and row["tags"] == tags, row
        assert row["fid"] == float(tags["fid"]) and row["generator_step"] == int(tags["generator_step"]), row

    reason = "sharper samples on the review grid"
    promoted = sagan(["models", "promote", str(other), "--reason", reason], r.proj, env)
    assert promoted.returncode == 0, tail(promoted)
    after = registry(r.proj, r.model)
    assert "champion" in after[other]["aliases"] and "champion" not in after[champion]["aliases"]
    tags = after[other]["tags"]
    assert (tags["promotion.reason"], tags["promotion.by"]) == (reason, "Dana Reviewer"), tags
    assert tags["promotion.replaced"] == str(champion), tags

    # the next scheduled run (nothing changed: DVC skips the stages, register sees its run again)
    # keeps the person's decision
    said = flow_run_said(r, r.trigger()["id"])
    for stage in ("prepare", "train", "evaluate"):
        assert re.search(rf"{stage}: skipped in [\d.]+ s \(dvc status: up to date\)", said), said[-3000:]
    assert "decided before; kept" in said, said[-3000:]
    assert "champion" in registry(r.proj, r.model)[other]["aliases"]

    back = sagan(["models", "rollback"], r.proj, env)
    assert back.returncode == 0, tail(back)
    assert "champion" in registry(r.proj, r.model)[champion]["aliases"]
    assert registry(r.proj, r.model)[other]["tags"]["promotion.decision"] == "rolled back"

    missing = sagan(["models", "promote", "999"], r.proj, env)
    assert missing.returncode == 2, tail(missing)
    assert len(missing.stderr.strip().splitlines()) == 1 and "Traceback" not in missing.stderr, tail(missing)


# ---- upgrading sagan ---------------------------------------------------------------------------------
def test_another_sagan_version_shows_every_stage_changed_until_init_upgrade_records_it(retrained):
    """Stands in for a real upgrade (one sagan version exists): the project records another version."""
    from pipelines.project import version

    r = retrained
    version.write(r.proj, "0.0.1")
    pending = dvc(["status"], r.proj, r.env).stdout
    assert all(f"{stage}:" in pending for stage in ("prepare", "train", "evaluate")), pending
    upgraded = sagan(["init", ".", "--upgrade"], r.proj, r.env)
    assert upgraded.returncode == 0, tail(upgraded)
    assert dvc(["status"], r.proj, r.env).stdout.strip() == INIT_UP_TO_DATE


# ---- a scheduled run that cannot succeed ---------------------------------------------------------
def test_a_failed_scheduled_run_says_why_in_prefect_and_keeps_the_champion(retrained):
    r = retrained
    before = registry(r.proj, r.model)
    images = Path(yaml.safe_load((r.proj / "params.yaml").read_text())["data"]["source"])
    for path in images.rglob("*.jpg"):
        path.write_bytes(b"not an image")  # someone's sync job broke every file
    run = r.trigger(until=("FAILED",))
    message = run["state"]["message"]  # what the Prefect UI shows on the run
    assert "stage prepare failed" in message and "no valid images" in message, message
    assert "\n" not in message.strip(), message
    logs = command("prefect", ["flow-run", "logs", run["id"]], r.proj, r.env).stdout
    assert "stage prepare failed" in logs, logs[-3000:]
    assert registry(r.proj, r.model) == before  # nothing registered, no alias moved
