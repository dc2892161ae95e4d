"""The registry after training goes on and after the data changes (pipelines/registry/: register,
promotion, compare, models), in process against a real sqlite MLflow store.

One project trains on a small image folder: v1 at step 2; training resumed to step 4 and evaluated
gives v2 (the registered generator is the one evaluated); images added and removed, a new run gives
v3, compared with the champion on equal terms (the champion's registered generator scored again
under v3's protocol, checked against `sagan evaluate` of v1's own checkpoint on the new data).
People then promote and roll back through `sagan models`' functions.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import project_params

pytestmark = pytest.mark.integration  # three short trainings, six Inception passes


def _images(root: Path, classes: int, per_class: int, seed: int) -> None:
    from PIL import Image

    for c in range(classes):
        for i in range(per_class):
            rng = random.Random(seed + 100 * c + i)
            path = root / f"class{c}/{seed}-{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            colour = tuple(rng.randrange(256) for _ in range(3))
            Image.new("RGB", (32, 32), colour).save(path)


def _params(project: Path, steps: int = 2):
    return project_params(
        project,
        data__source=str(project / "images"),
        data__channels=3,
        tracking__uri=f"sqlite:///{project / 'mlflow.db'}",
        registry__model_name="letters",
        eval__checkpoint="last",
        eval__num_samples=24,
        eval__batch_size=24,
        eval__kid_subsets=2,
        eval__kid_subset_size=8,
        train__steps=steps,
    )  # the other paths (run record, evaluation record, statistics cache) are project-relative


@pytest.fixture(scope="module")
def history(tmp_path_factory, standin_torch_home):
    """v1 (step 2), v2 (the same run resumed to step 4), v3 (new images): the registry's story."""
    from pipelines import stages
    from sagan_core.evaluate.identity import protocol_id
    from sagan_core.evaluate.protocol import evaluate, expected_protocol

    project = tmp_path_factory.mktemp("registry")
    env_before = {k: os.environ.get(k) for k in ("SAGAN_TRACKING", "TORCH_HOME", "SAGAN_USER")}
    os.environ.update(SAGAN_TRACKING="1", TORCH_HOME=str(standin_torch_home))
    cwd = os.getcwd()
    os.chdir(project)
    try:
        _images(project / "images", classes=2, per_class=12, seed=1)
        p = _params(project)
        stages.prepare(p, progress=False)
        stages.train(p, progress=False)
        stages.evaluate(p, progress=False)
        v1 = stages.register(p)
        shutil.copy(
            project / "models/checkpoint.pt", project / "v1.pt"
        )  # v1's generator, for the check below

        p4 = _params(project, steps=4)
        stages.train(p4, resume=True, progress=False)
        stages.evaluate(p4, progress=False)
        v2 = stages.register(p4)
        v2_again = stages.register(p4)

        for stale in sorted((project / "images/class0").iterdir())[:3]:
            stale.unlink()
        _images(project / "images", classes=2, per_class=4, seed=7)
        stages.prepare(p, progress=False)
        (project / "models/checkpoint.pt").unlink()  # other data: a new run from step 0
        stages.train(p, progress=False)
        record_v3 = stages.evaluate(p, progress=False)
        v3 = stages.register(p)
        # the independent expectation: v1's own checkpoint evaluated now, as `sagan evaluate` does
        v1_now = evaluate(p, checkpoint=project / "v1.pt", progress=False)
        expected = expected_protocol(p)
        yield SimpleNamespace(
            project=project,
            params=p,
            v1=v1,
            v2=v2,
            v2_again=v2_again,
            v3=v3,
            v1_now=v1_now,
            record_v3=json.loads((project / "metrics/eval.record.json").read_text()),
            evaluated_v3=record_v3,
            expected_id=protocol_id(expected),
        )
    finally:
        os.chdir(cwd)
        for key, value in env_before.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _client(h):
    from mlflow import MlflowClient

    uri = h.params.tracking.uri
    return MlflowClient(uri, registry_uri=uri)


def test_a_resumed_improvement_is_a_new_version_holding_the_evaluated_generator(history):
    h = history
    assert (h.v1.version, h.v1.generator_step, h.v1.decision) == (1, 2, "champion")
    assert h.v2.created and h.v2.version == 2 and h.v2.generator_step == 4
    assert not h.v2_again.created and h.v2_again.version == 2  # once per run and step
    tags = _client(h).get_model_version("letters", "2").tags
    assert tags["generator_step"] == "4" and tags["run_id"] == h.v1.run_id  # the same run, later step
    assert float(tags["fid"]) == h.v2.fid


def test_after_new_images_the_champion_is_scored_again_on_equal_terms(history):
    from sagan_core.evaluate.identity import protocol, protocol_id

    h = history
    client = _client(h)
    v1 = client.get_model_version("letters", "1")
    v3 = client.get_model_version("letters", str(h.v3.version))
    pid = v3.tags["protocol_id"]
    assert v1.tags["protocol_id"] != pid  # the reference (the prepared data) changed
    assert json.loads(v1.tags["protocol"])["reference_content_hash"] != h.record_v3["reference_content_hash"]
    # the expected protocol is what an evaluation records, without running one
    assert h.expected_id == protocol_id(h.record_v3) == pid
    rescored = float(v1.tags[f"fid.{pid}"])
    # v1's registered (exported) generator scored under v3's protocol agrees with its checkpoint
    # evaluated by `sagan evaluate` on the new data, under the same protocol
    assert protocol_id(h.v1_now) == pid and protocol(h.v1_now) == protocol(h.record_v3)
    assert rescored == pytest.approx(h.v1_now["fid"], rel=1e-3)
    assert "not comparable" not in h.v3.reason and "scored again" in h.v3.reason
    beats = float(v3.tags["fid"]) < rescored - h.params.registry.min_improvement
    assert h.v3.decision == ("champion" if beats else "challenger")
    assert f"{rescored:.4g}" in h.v3.reason


def test_the_gate_names_the_field_when_the_champion_cannot_be_compared():
    from pipelines.registry.promotion import decide

    def version(number, fid, **protocol):
        proto = {"num_samples": 250, "reference_content_hash": "a" * 64, "dims": 2048} | protocol
        from sagan_core.evaluate.identity import protocol_id

        tags = {"fid": str(fid), "protocol": json.dumps(proto), "protocol_id": protocol_id(proto)}
        return SimpleNamespace(version=str(number), tags=tags)

    champion, new = version(1, 50.0), version(2, 40.0, reference_content_hash="b" * 64)
    promote, reason = decide(new, champion, 0.0, why_not="its artifacts are gone")
    assert not promote
    assert "reference_content_hash aaaaaaaaaaaa != bbbbbbbbbbbb" in reason and "num_samples" not in reason
    assert "its artifacts are gone" in reason and "\n" not in reason
    # with a score under the new protocol recorded on the champion, the same pair is compared
    champion.tags[f"fid.{new.tags['protocol_id']}"] = "45.0"
    promote, reason = decide(new, champion, 0.0)
    assert promote and "45" in reason and "scored again" in reason


def test_people_promote_and_roll_back_with_the_reason_and_their_name(history, monkeypatch):
    from pipelines.registry import models
    from pipelines.registry.register import register
    from sagan_core.errors import ConfigError

    h = history
    monkeypatch.chdir(h.project)
    monkeypatch.setenv("SAGAN_TRACKING", "1")
    client = _client(h)
    champion_before = str(client.get_model_version_by_alias("letters", "champion").version)
    other = "2" if champion_before != "2" else "1"

    monkeypatch.setenv("SAGAN_USER", "alice")
    said = models.promote(h.params, int(other), "looks sharper")
    now = client.get_model_version_by_alias("letters", "champion")
    assert str(now.version) == other
    tags = client.get_model_version("letters", other).tags
    assert tags["promotion.by"] == "alice" and tags["promotion.reason"] == "looks sharper"
    assert tags["promotion.replaced"] == champion_before and tags["promotion.decision"] == "champion"
    # the comparison is recorded on equal terms: both FIDs under one protocol
    comparison = tags["promotion.comparison"]
    assert (
        "under protocol" in comparison
        and comparison in said
        and f"champion v{champion_before}'s" in comparison
    )

    # the model cards say it too (a card written at registration would still say "champion")
    card = client.get_model_version("letters", other).description
    assert "**Promotion: champion.** looks sharper (alice, " in card
    assert "**Promotion: replaced.** v" in client.get_model_version("letters", champion_before).description

    rows = {r["version"]: r for r in models.versions(h.params)}
    assert rows[int(other)]["aliases"] == ["champion"] and rows[int(other)]["promoted_by"] == "alice"
    assert [rows[v]["generator_step"] for v in (1, 2)] == [2, 4]
    table = models.table(models.versions(h.params))
    assert f"v{other}" in table and "alice" in table

    # the next register of the latest run does not undo what a person did
    again = register(h.params)
    assert not again.created
    assert str(client.get_model_version_by_alias("letters", "champion").version) == other

    monkeypatch.setenv("SAGAN_USER", "bob")
    models.rollback(h.params, "regression in the letters")
    assert str(client.get_model_version_by_alias("letters", "champion").version) == champion_before
    rolled = client.get_model_version("letters", other).tags
    assert rolled["promotion.decision"] == "rolled back" and rolled["promotion.by"] == "bob"
    assert "**Promotion: rolled back.** by bob" in client.get_model_version("letters", other).description
    assert (
        "**Promotion: champion.** again" in client.get_model_version("letters", champion_before).description
    )

    with pytest.raises(ConfigError, match="no version 999 .versions: 1, 2, 3."):
        models.promote(h.params, 999, None)
