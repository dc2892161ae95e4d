"""The evaluation protocol's identity: FIDs compare only under the same protocol_id."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Not the generator's step or EMA, timings or the sampling seed
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
    """`reference_content_hash 488fc50ef260 != 7a1b2c3d4e5f; num_samples 250 != 500`."""

    def short(value: Any) -> str:
        text = json.dumps(value, sort_keys=True, default=str).strip('"')
        return text[:12] if len(text) > 16 and " " not in text else text

    pa, pb = protocol(a), protocol(b)
    diff = [f"{k} {short(pa.get(k))} != {short(pb.get(k))}" for k in PROTOCOL_KEYS if pa.get(k) != pb.get(k)]
    return "; ".join(diff) or "no field differs"
