"""Which checkpoint `sagan register` registers (registry.candidate), and why.

best: train.out_dir/best.pt, the checkpoint with the best in-training `train.select_metric`; its
generator was logged as a LoggedModel while training ran (tracking/best_model.py), so the version
points at that model and carries its model_id (and, through it, its KID/FID and dataset). With
in-training evaluation off there is no best.pt and best means the last checkpoint. last: the
checkpoint at the end of training (checkpoint.pt), logged at the end of training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sagan_core.config import Params
from sagan_core.model.checkpoint import candidate


def choice(params: Params) -> tuple[Path, str, str]:
    """(checkpoint, "best" | "last", why) for registry.candidate."""
    which = params.registry.candidate
    path = candidate(params.train, which)
    if path == params.train.best_checkpoint:
        return path, "best", f"registry.candidate=best: the best in-training {params.train.select_metric}"
    if which == "best":
        return (
            path,
            "last",
            "registry.candidate=best, but no in-training evaluation wrote best.pt: the last checkpoint",
        )
    return path, "last", "registry.candidate=last: the last checkpoint"


def best_model(
    client, params: Params, run_id: str, record: dict[str, Any], path: Path, step: int
) -> tuple[str, str]:
    """(model_id, why) of the best checkpoint at `step`: the LoggedModel logged during training, or,
    when that upload never completed, the generator of best.pt logged now."""
    from mlflow.entities import LoggedModelStatus

    from pipelines.tracking.generator_model import log_generator
    from sagan_core.model import checkpoint as ckpt_io

    best = record.get("best") or {}
    model_id = best.get("model_id") if best.get("step") == step else None
    if model_id and client.get_logged_model(model_id).status == LoggedModelStatus.READY:
        return model_id, f"{best['metric']} {best['value']:.6g} at step {step}, the best in-training score"
    generator, meta = ckpt_io.load_generator(path, use_ema=True, device="cpu")
    model_id = log_generator(client, run_id, generator, meta)
    value = meta.get("best_value")
    return model_id, f"{meta.get('best_metric')} {value:.6g} at step {step}, the best in-training score"


def link_version(client, model_id: str, name: str, version: str) -> None:
    """Mark the LoggedModel as registered (the UI's "Registered" column), as `mlflow.register_model`
    does: the open-source registry stores no model_id on the version itself (its source
    `models:/<model_id>` and the version tag `model_id` name the model)."""
    import json

    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    model = client.get_logged_model(model_id)
    versions = json.loads(model.tags.get(MLFLOW_MODEL_VERSIONS, "[]"))
    if {"name": name, "version": str(version)} not in versions:
        versions.append({"name": name, "version": str(version)})
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})
