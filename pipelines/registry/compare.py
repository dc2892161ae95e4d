"""Two registered versions compared on equal terms: the same evaluation protocol.

A version's FID (tag `fid`) holds under its own protocol (tags `protocol`, `protocol_id`); after the
data changes, the older version's registered generator (checked as `sagan sample` checks it, not a
checkpoint that may have moved on) is scored again under the project's protocol now and the score
kept on it as the tag `fid.<protocol_id>` (once per protocol).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from pipelines.tracking.store import scrub
from sagan_core.config import Params
from sagan_core.errors import SaganError
from sagan_core.evaluate.identity import protocol_difference, protocol_id

log = logging.getLogger("sagan.registry")


def fid_under(mv, pid: str) -> float | None:
    """Version `mv`'s FID under protocol `pid`: its own, else its re-scored one, else None."""
    tags = mv.tags or {}
    if tags.get("protocol_id") == pid and tags.get("fid") is not None:
        return float(tags["fid"])
    return float(tags[f"fid.{pid}"]) if f"fid.{pid}" in tags else None


def version_protocol(mv) -> dict[str, Any]:
    try:
        return json.loads((mv.tags or {}).get("protocol", "{}"))
    except ValueError:
        return {}


def score_under(client, params: Params, name: str, mv, target: dict[str, Any]) -> float:
    """`mv`'s FID under protocol `target`, scored again when it has none there; a one-line refusal
    when `target` is not the project's protocol now (the only one this machine can score under)."""
    from types import SimpleNamespace

    from pipelines.registry.sampling import load_sampler
    from sagan_core.evaluate.protocol import expected_protocol, score_generator  # torch: only when scoring

    pid = protocol_id(target)
    if (known := fid_under(mv, pid)) is not None:
        return known
    try:
        now = expected_protocol(params)
    except SaganError as e:
        raise SaganError(f"cannot score {name} v{mv.version} under protocol {pid} here: {e}") from None
    if protocol_id(now) != pid:
        raise SaganError(f"cannot score {name} v{mv.version} under protocol {pid}: the project's evaluation "
                         f"settings or data differ from it now ({protocol_difference(target, now)}); run `sagan evaluate` again")
    try:  # `mv`'s registered generator scored under the protocol now, recorded on the version
        uri = f"models:/{name}/{mv.version}"
        log.info("scoring %s v%s again under this project's protocol (%s)", name, mv.version,
                 protocol_difference(version_protocol(mv), now))
        try:
            sampler = load_sampler(uri, params)
        except SaganError as e:
            raise SaganError(f"cannot score {name} v{mv.version} again: {e}") from None

        def g(z, y=None):  # as score_generator takes a network; the exported one runs on the CPU
            return sampler.generate(z.cpu(), None if y is None else y.cpu()).to(z.device)

        g.spec = SimpleNamespace(z_dim=sampler.z_dim, num_classes=sampler.num_classes)
        step = (mv.tags or {}).get("generator_step")
        about = {"checkpoint": uri, "generator_step": int(step) if step else None, "ema": True}
        record = score_generator(params, g, about, progress=False)
        tag, fid = f"fid.{protocol_id(record)}", float(record["fid"])
        client.set_model_version_tag(name, mv.version, tag, repr(fid))
        log.info("%s v%s: FID %.4g under this protocol (recorded as tag %s)", name, mv.version, fid, tag)
        return fid
    except SaganError:
        raise
    except Exception as e:  # noqa: BLE001 - download/decoding/Inception failures: one line
        first = scrub(" ".join(str(e).split()))[:200]
        raise SaganError(f"cannot score {name} v{mv.version} again: {type(e).__name__}: {first}") from None
