"""What shaped a checkpoint's weights, recorded in the checkpoint itself (key `fingerprint`).

The prepared data's content_hash, the model params and the training params, except those that
change nothing in the weights (how long, how often something is logged, saved or evaluated), so a
run continued to more steps or with other logging is still "the same run". The flow resumes a
checkpoint only when its fingerprint equals the current one (sagan_core/train/resume.py); a plain
`sagan train --resume` with other values warns, naming each changed key.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Train params that change nothing in the trained weights.
NOT_IN_FINGERPRINT = {
    "steps",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "compile",
    "compile_mode",
    "eval_every",
    "eval_samples",
    "select_metric",
    "keep_checkpoints",
    "standing_stats",  # only the EMA generator's BatchNorm statistics, recomputed on every save
    "rdzv_endpoint",  # where several nodes meet, not what they train (nnodes is: the world size)
    "rdzv_id",
    "dist_timeout_s",
    "launcher",  # where the processes run, not what they train
    "k8s_image",
    "k8s_repository",
    "k8s_revision",
    "k8s_namespace",
    "k8s_name",
    "k8s_secret",
    "k8s_timeout_s",
    "k8s_poll_s",
}


# Train params recorded only when their option is on (DiffAugment, LeCam): a run with both off has
# the fingerprint it had before these options existed, so its older checkpoints still resume.
OFF_VALUES = {"diffaug": "", "lecam_weight": 0.0}
ONLY_WITH = {"lecam_decay": "lecam_weight"}


def inputs(params, content_hash: str) -> dict[str, Any]:
    """{"data.content_hash": ..., "data.hflip": ..., "model.*": ..., "train.*": ...}."""
    raw = params.train.model_dump()
    off = {k for k, v in OFF_VALUES.items() if raw[k] == v}
    off |= {k for k, owner in ONLY_WITH.items() if owner in off}
    train = {f"train.{k}": v for k, v in raw.items() if k not in NOT_IN_FINGERPRINT | off}
    if train.get("train.nnodes") == 1:
        del train["train.nnodes"]  # one machine: the fingerprint of checkpoints made before the key
    model = {f"model.{k}": v for k, v in params.model.model_dump().items()}
    return {"data.content_hash": content_hash, "data.hflip": params.data.hflip, **model, **train}


def digest(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


def record(params, content_hash: str) -> dict[str, Any]:
    """The checkpoint's `fingerprint` entry: the hash and the values it hashes (to name changes)."""
    values = inputs(params, content_hash)
    return {"sha256": digest(values), "inputs": values}


def changes(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each input that differs between two fingerprint records."""
    old, new = (saved or {}).get("inputs", {}), now["inputs"]
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]
