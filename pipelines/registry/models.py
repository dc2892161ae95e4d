"""`sagan models list|promote|rollback`: the registered versions for people, and their decisions.

A person's promote compares both FIDs under one protocol first (compare.py) and records that
comparison; a worse FID does not stop a person, a comparison that cannot be made does. Rollback
returns to `promotion.replaced`, again walks further back. Aliases and version tags only.
"""

from __future__ import annotations

import getpass
import os
from typing import Any

from pipelines.registry import promotion as p
from pipelines.registry.compare import score_under, version_protocol
from pipelines.tracking.store import call, connect
from sagan_core.config import Params
from sagan_core.errors import ConfigError
from sagan_core.evaluate.identity import protocol_id


def person() -> str:
    """Who acts: $SAGAN_USER (e.g. set by CI to the person who triggered it), else the login name."""
    try:
        return os.environ.get("SAGAN_USER") or getpass.getuser()
    except (KeyError, OSError):  # no login name in a bare container
        return "unknown"


def _model(params: Params):
    """(client, model name, registered model); a ConfigError when nothing is registered."""
    from mlflow.exceptions import MlflowException

    client, uri = connect(params)
    name = params.registry.model_name
    try:
        model = call(uri, client.get_registered_model, name)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise ConfigError(
                f"no registered model {name!r} at this tracking store (run `sagan register`)"
            ) from None
        raise
    return client, name, model


def versions(params: Params) -> list[dict[str, Any]]:
    """Every version as a row, oldest first."""
    client, name, model = _model(params)
    rows = []
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda m: int(m.version)):
        tags = dict(mv.tags or {})
        held = sorted(alias for alias, v in (model.aliases or {}).items() if str(v) == str(mv.version))
        decision = tags.get(p.DECISION)
        rows.append({
            "version": int(mv.version),
            "generator_step": int(tags["generator_step"]) if tags.get("generator_step") else None,
            "fid": float(tags["fid"]) if tags.get("fid") else None,
            "protocol_id": tags.get("protocol_id"),
            "reference": version_protocol(mv).get("reference_content_hash") or tags.get("content_hash"),
            "aliases": held,
            "registered_at": mv.creation_timestamp,
            # a champion since replaced still carries the decision it was given: shown as replaced
            "decision": "replaced" if decision == p.CHAMPION and p.CHAMPION not in held else decision,
            "promoted_at": tags.get(p.AT),
            "promoted_by": tags.get(p.BY),
            "reason": tags.get(p.REASON),
            "replaced": tags.get(p.REPLACED),
            "run_id": mv.run_id,
            "tags": tags,
        })
    return rows


def table(rows: list[dict[str, Any]], width: int = 60) -> str:
    """`sagan models list`: one line per version, the newest last."""
    head = ("version", "step", "FID", "reference (data, protocol)", "aliases", "decided", "by", "why")
    lines = []
    for r in rows:
        ref = f"{(r['reference'] or '?')[:12]}, {(r['protocol_id'] or '?')[:8]}"
        reason = (r["reason"] or "").replace("\n", " ")
        fid = f"{r['fid']:.4g}" if r["fid"] is not None else "-"
        when = f"{r['decision'] or '-'} {r['promoted_at'] or ''}".strip()
        step = "-" if r["generator_step"] is None else str(r["generator_step"])
        reason = reason if len(reason) <= width else reason[: width - 1] + "…"
        aliases, by = ",".join(r["aliases"]) or "-", r["promoted_by"] or "-"
        lines.append((f"v{r['version']}", step, fid, ref, aliases, when, by, reason))
    widths = [max(map(len, column)) for column in zip(head, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return "\n".join(fmt.format(*row) for row in [head, *lines])


def _version(client, name: str, version: int):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        found = sorted(int(m.version) for m in client.search_model_versions(f"name='{name}'"))
        known = ", ".join(map(str, found)) or "none"
        raise ConfigError(f"{name} has no version {version} (versions: {known})") from None


def promote(params: Params, version: int, reason: str | None) -> str:
    """The champion alias to `version` (a person's decision, recorded); returns what was done."""
    client, name, _ = _model(params)
    mv = _version(client, name, version)
    champion = p.alias_version(client, name, p.CHAMPION)
    if champion is not None and p.same_version(champion, mv):
        return f"{name} v{version} is the champion already"
    comparison = ""
    if champion is not None:
        champion = client.get_model_version(name, champion.version)
        from sagan_core.evaluate.protocol import expected_protocol  # torch: only when comparing

        same = mv.tags.get("protocol_id") == champion.tags.get("protocol_id")
        target = version_protocol(mv) if same else expected_protocol(params)
        mine = score_under(client, params, name, mv, target)
        theirs = score_under(client, params, name, champion, target)
        comparison = f"FID {mine:.4g} against champion v{champion.version}'s {theirs:.4g} under protocol {protocol_id(target)}"
    who, why = person(), reason or "no reason given"
    extra = {"comparison": comparison} if comparison else {}
    with p.decision_lock(params):
        p.record_promotion(client, name, mv.version, why, who, champion, **extra)
    done = f"{name} v{version} is the champion, promoted by {who}: {why}"
    return done + (f" ({comparison})" if comparison else "")


def rollback(params: Params, reason: str | None) -> str:
    """The champion back to the version it replaced; returns what was done."""
    client, name, _ = _model(params)
    who = person()
    with p.decision_lock(params):
        champion = p.alias_version(client, name, p.CHAMPION)
        if champion is None:
            raise ConfigError(f"{name} has no champion to roll back")
        champion = client.get_model_version(name, champion.version)
        before = champion.tags.get(p.REPLACED)
        if not before:
            raise ConfigError(f"{name} v{champion.version} replaced no earlier champion: "
                              "nothing to roll back to")
        previous = _version(client, name, int(before))
        why = reason or "no reason given"
        p.crown(client, name, previous.version)
        at = p.now_utc()
        # `promotion.replaced` of the restored version is kept: a second rollback goes further back
        for version, decision, note, card in (
            (previous.version, p.CHAMPION, f"champion again: v{champion.version} rolled back by {who}: {why}",
             f"again: v{champion.version} rolled back ({who}, {at}: {why})"),
            (champion.version, "rolled back", f"rolled back by {who}: {why}", f"by {who}, {at}: {why}"),
        ):  # fmt: skip
            p.tag_version(client, name, version, {p.DECISION: decision, p.REASON: note, p.BY: who, p.AT: at})
            p.restate(client, name, version, decision, card)
    return f"{name}: champion v{champion.version} rolled back to v{previous.version} ({why})"
