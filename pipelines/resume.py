"""When the flow's train task resumes a checkpoint instead of training from step 0.

A checkpoint is resumed only when it was made from the same data and the same params that shape
the weights (a retried task, or a rerun after a crash or kill -9); `--resume` is bit-exact, so the
result equals an uninterrupted run. The fingerprint of what made the checkpoint is kept in
`.sagan/pipeline/train-fingerprint.json`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sagan_core.config import Params

STATE_DIR = Path(".sagan/pipeline")
TRAIN_STAMP = STATE_DIR / "train-fingerprint.json"
# Train params that change nothing in the trained weights: a checkpoint made with other values of
# these can still be resumed (train.steps too: `--resume` continues the same run to more steps).
_NOT_IN_FINGERPRINT = {"steps", "log_every", "sample_every", "checkpoint_every", "compile", "compile_mode"}


def train_fingerprint(params: Params, data_hash: str) -> str:
    """What a checkpoint must have been made from to be resumable: data, model and train params."""
    train = {k: v for k, v in params.train.model_dump().items() if k not in _NOT_IN_FINGERPRINT}
    blob = json.dumps(
        {"data": data_hash, "model": params.model.model_dump(), "train": train, "hflip": params.data.hflip},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def stamp(params: Params, data_hash: str) -> None:
    """Record what the checkpoint about to be written is made from."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    TRAIN_STAMP.write_text(json.dumps({"fingerprint": train_fingerprint(params, data_hash)}))


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint; None when it is missing, truncated or foreign."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # missing, truncated or foreign: not resumable
        return None


def resume_decision(params: Params, data_hash: str, force: bool) -> tuple[bool, str]:
    """(resume?, why): resume only a checkpoint of this very run that is not past train.steps."""
    ckpt = params.train.checkpoint
    if force:
        return False, "force: training from step 0"
    if not ckpt.exists():
        return False, "no checkpoint: training from step 0"
    saved = json.loads(TRAIN_STAMP.read_text()) if TRAIN_STAMP.exists() else {}
    if saved.get("fingerprint") != train_fingerprint(params, data_hash):
        return False, "checkpoint is from other data or params: training from step 0"
    step = checkpoint_step(ckpt)
    if step is None or step > params.train.steps:
        return False, f"checkpoint step {step} does not fit train.steps={params.train.steps}: from step 0"
    return True, f"resuming from the checkpoint at step {step}"
