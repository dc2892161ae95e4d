"""The evaluation protocol's identity: which FIDs may be compared with which.

Two evaluations are comparable only under the same protocol: the same reference statistics (split,
size, content, Inception weights, feature dims, feature-extraction recipe) and the same sample count.
The registry's promotion gate compares FIDs only between versions with the same `protocol_id`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Fields that define "the same evaluation protocol": the reference statistics (split, size, how
# they were computed) and the sample count. Anything about the evaluated generator (its step,
# EMA or not), timings and the sampling seed are deliberately not part of it.
PROTOCOL_KEYS = (
    "num_samples",
    "reference_split",
    "reference_size",
    "reference_content_hash",
    "weights_sha256",
    "dims",
    "protocol",  # the feature-extraction recipe (a string) or a dict of the fields above
)


def protocol(eval_metrics: dict[str, Any]) -> dict[str, Any]:
    source = eval_metrics.get("protocol") if isinstance(eval_metrics.get("protocol"), dict) else eval_metrics
    return {k: source[k] for k in PROTOCOL_KEYS if k in source}


def protocol_id(eval_metrics: dict[str, Any]) -> str:
    blob = json.dumps(protocol(eval_metrics), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
