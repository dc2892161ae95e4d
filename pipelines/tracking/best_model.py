"""Each best checkpoint of a training run (models/best.pt) as an MLflow LoggedModel.

The generator is logged exactly as the end-of-training one (generator_model.log_generator), then
linked to the in-training KID/FID that made it best: those metrics carry its `model_id` and the
prepared dataset (name + digest, as lineage logs the run's dataset input), so the LoggedModel page
shows its scores and data. Tags say which step and why. The checkpoint itself goes to the run's
artifacts as `checkpoint/best.pt` (resumable with `--resume-from`), and the run record keeps
{"best": {model_id, step, metric, value}} for `sagan register`.
"""

from __future__ import annotations

from pathlib import Path

from sagan_core.config import Params

from .generator_model import CHECKPOINT_DIR, log_generator
from .lineage import data_lineage
from .run_record import read_run_record, write_run_record

SCORE_KEYS = ("kid", "kid_std", "fid")


def log_best(client, run_id: str, params: Params, snap: Path, step: int, scores: dict[str, float]) -> str:
    """Log the generator of best-checkpoint snapshot `snap`; returns the LoggedModel id."""
    from sagan_core import checkpoint as ckpt_io

    metric = params.train.select_metric
    generator, meta = ckpt_io.load_generator(snap, use_ema=True, device="cpu")
    model_id = log_generator(client, run_id, generator, meta)
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
            key,
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
