"""Each best checkpoint of a training run (models/best.pt) as an MLflow LoggedModel.

The generator is logged exactly as the end-of-training one (generator_model), in two halves: the
export on the training thread (`export_best`: torch.export must not overlap a training step), the
logging and uploads in the background (`log_best`). It is linked to the in-training KID/FID that
made it best: those metrics carry its `model_id` and the prepared dataset (name + digest, as
lineage logs the run's dataset input), so the LoggedModel page shows its scores and data. Tags say
which step and why. The checkpoint itself goes to the run's artifacts as `checkpoint/best.pt`
(resumable with `--resume-from`), and the run record keeps {"best": {model_id, step, metric,
value}} for `sagan register`, which registers that LoggedModel (`logged_best`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.tracking.generator_model import CHECKPOINT_DIR, export_generator, log_exported
from pipelines.tracking.lineage import data_lineage
from pipelines.tracking.names import TRAIN_EVAL_KEYS, train_metric
from pipelines.tracking.run_record import read_run_record, write_run_record
from sagan_core.config import Params
from sagan_core.model import checkpoint as ckpt_io

SCORE_KEYS = TRAIN_EVAL_KEYS  # logged as train_eval/kid, ... (names.py)


def export_best(snap: Path) -> tuple[Path, dict[str, Any], Any]:
    """(exported network folder, checkpoint metadata, model spec) of best-checkpoint snapshot
    `snap`'s EMA generator, exported next to the snapshot (its folder goes when the job is done)."""
    generator, meta = ckpt_io.load_generator(snap, use_ema=True, device="cpu")
    return export_generator(generator, snap.parent), meta, generator.spec


def log_best(
    client, run_id: str, params: Params, snap: Path, exported: tuple, step: int, scores: dict[str, float]
) -> str:
    """Log the generator `export_best` exported from `snap`; returns the LoggedModel id."""
    metric = params.train.select_metric
    torch_dir, meta, spec = exported
    model_id = log_exported(client, run_id, torch_dir, spec, meta)
    why = f"best {metric} so far: {scores[metric]:.6g} at step {step} (in-training evaluation)"
    client.set_logged_model_tags(
        model_id,
        {
            "sagan.checkpoint": "best",
            "sagan.step": str(step),
            "sagan.select_metric": metric,
            "sagan.why": why,
        },
    )
    digest = data_lineage(params)["content_hash"][:36]  # MLflow's digest limit, as lineage.py
    for key in SCORE_KEYS:
        client.log_metric(
            run_id,
            train_metric(key),
            float(scores[key]),
            step=step,
            model_id=model_id,
            dataset_name="prepared",
            dataset_digest=digest,
        )
    client.log_artifact(run_id, str(snap), CHECKPOINT_DIR)
    best = {"model_id": model_id, "step": step, "metric": metric, "value": float(scores[metric])}
    write_run_record(params, (read_run_record(params) or {}) | {"best": best})
    return model_id


def logged_best(client, run_id: str, record: dict[str, Any], path: Path, step: int) -> tuple[str, str]:
    """(model_id, why) of the best checkpoint at `step`: the LoggedModel logged during training, or,
    when that upload never completed, the generator of best.pt logged now."""
    from mlflow.entities import LoggedModelStatus

    from pipelines.tracking.generator_model import log_generator

    best = record.get("best") or {}
    model_id = best.get("model_id") if best.get("step") == step else None
    if model_id and client.get_logged_model(model_id).status == LoggedModelStatus.READY:
        return model_id, f"{best['metric']} {best['value']:.6g} at step {step}, the best in-training score"
    generator, meta = ckpt_io.load_generator(path, use_ema=True, device="cpu")
    model_id = log_generator(client, run_id, generator, meta)
    value = meta.get("best_value")
    return model_id, f"{meta.get('best_metric')} {value:.6g} at step {step}, the best in-training score"
