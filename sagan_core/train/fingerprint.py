"""What shaped a checkpoint's weights, recorded in it (key `fingerprint`): the flow resumes a
checkpoint only when this matches (train/resume.py); `sagan train --resume` warns per changed key."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# The one allow-list of params that shape the weights (whole sections or keys); dvc.yaml's train
# stage must depend on each (tests/test_dvc_deps.py). How long, where and how often something is
# logged, saved or evaluated is left out, so a run continued to more steps is still the same run.
_TRAIN = "batch_size lr_g lr_d beta1 beta2 n_dis seed ema_decay ema_start diffaug lecam_weight lecam_decay"
_NUMERICS = "device precision channels_last nproc_per_node nnodes"  # arithmetic and world size
SHAPES_WEIGHTS = ("data.hflip", "model", *(f"train.{k}" for k in f"{_TRAIN} {_NUMERICS}".split()))


def inputs(params, content_hash: str) -> dict[str, Any]:
    """{"data.content_hash": ..., and each SHAPES_WEIGHTS key (a section: each of its keys)}."""
    dumped, values = params.model_dump(), {"data.content_hash": content_hash}
    for key in SHAPES_WEIGHTS:
        section, _, name = key.partition(".")
        fields = {name: dumped[section][name]} if name else dumped[section]
        values |= {f"{section}.{k}": v for k, v in fields.items()}
    return values


def record(params, content_hash: str) -> dict[str, Any]:
    """The checkpoint's `fingerprint` entry: the hash and the values it hashes (to name changes)."""
    values = inputs(params, content_hash)
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()
    return {"sha256": digest, "inputs": values}


def changes(saved: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """`key: old -> new` for each input that differs between two fingerprint records."""
    old, new = (saved or {}).get("inputs", {}), now["inputs"]
    keys = sorted(old.keys() | new.keys())
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
