"""Inception weights are checked against the official file's sha256: foreign weights warn, and the
evaluation record, the registered version's tags and its model card say its FID is unofficial."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
from helpers import eval_params, write_checkpoint

from pipelines.registry.model_card import version_card
from pipelines.registry.register import _version_tags
from sagan_core.evaluate import inception as inc
from sagan_core.evaluate import protocol as E

pytestmark = pytest.mark.integration


def test_foreign_inception_weights_warn_and_are_recorded_unofficial(
    project, monkeypatch, standin_torch_home, caplog
):
    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))
    write_checkpoint(project / "models/checkpoint.pt", seed=0)
    with caplog.at_level(logging.WARNING, logger="sagan.evaluate"):
        result = E.evaluate(eval_params(project), progress=False)
    on_disk = json.loads((project / "metrics/eval.record.json").read_text())
    assert on_disk["weights_official"] is False and result["weights_official"] is False
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    weights = inc.default_weights_path()
    assert any(str(weights) in w and "NOT comparable with published" in w for w in warnings), warnings

    # The registered version carries the flag, so a registry reader sees it without eval.json.
    run = SimpleNamespace(data=SimpleNamespace(tags={}), info=SimpleNamespace(run_id="r1"))
    assert _version_tags(on_disk, run)["weights_official"] == "false"
    assert _version_tags(on_disk | {"weights_official": True}, run)["weights_official"] == "true"
    # ... and its description (the model card) says what that means.
    params = eval_params(project)
    run.data.params = {}
    card = version_card(params, "m", 1, run, on_disk, "champion", "no champion yet")
    assert "Unofficial Inception weights" in card
    card = version_card(
        params, "m", 1, run, on_disk | {"weights_official": True}, "champion", "no champion yet"
    )
    assert "Unofficial" not in card


@pytest.mark.unit
def test_official_sha256_is_the_torch_hub_prefix_of_the_file_name():
    # torch hub names files NAME-<first 8 hex of sha256>.pth; the full digest must agree with it.
    assert len(inc.OFFICIAL_SHA256) == 64 and inc.WEIGHTS_NAME.endswith(f"-{inc.OFFICIAL_SHA256[:8]}.pth")
    assert inc.is_official(inc.OFFICIAL_SHA256) and not inc.is_official("0" * 64)
