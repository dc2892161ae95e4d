"""What makes two evaluations comparable: the protocol's identity, and what differs between two.

Two evaluations are comparable only under the same protocol: the same reference statistics (split,
size, content, Inception weights, feature dims, feature-extraction recipe) and the same sample
count. The registry compares FIDs only between versions with the same `protocol_id`, and names
the fields that differ when they are not (`protocol_difference`). Pure functions of records.
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


def protocol_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """What differs between two protocols, field by field, for a one-line message:
    `reference_content_hash 488fc50ef260 != 7a1b2c3d4e5f; num_samples 250 != 500`."""

    def short(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, default=str).strip('"')
        return text[:12] if len(text) > 16 and " " not in text else text

    pa, pb = protocol(a), protocol(b)
    diff = [f"{k} {short(pa.get(k))} != {short(pb.get(k))}" for k in PROTOCOL_KEYS if pa.get(k) != pb.get(k)]
    return "; ".join(diff) or "no field differs"
