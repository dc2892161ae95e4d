"""`sagan models list|promote|rollback`: the registered versions for people, and their decisions.

A person's promote compares both FIDs under one protocol first (compare.py) and records that
comparison; a worse FID does not stop a person, a comparison that cannot be made does. Rollback
returns to `promotion.replaced`, again walks further back. Aliases and version tags only.
"""

from __future__ import annotations

import getpass
import os
from typing import Any

from pipelines.registry.compare import score_under, version_protocol
from pipelines.registry.promotion import (
    AT,
    BY,
    CHAMPION,
    DECISION,
    REASON,
    REPLACED,
    alias_version,
    crown,
    decision_lock,
    error_code,
    now_utc,
    record_promotion,
    restate,
    same_version,
    tag_version,
)
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
        if "RESOURCE_DOES_NOT_EXIST" in error_code(e):
            raise ConfigError(
                f"no registered model {name!r} at this tracking store (run `sagan register`)"
            ) from None
        raise
    return client, name, model


def versions(params: Params) -> list[dict[str, Any]]:
    """Every version as a row, oldest first."""
    client, name, model = _model(params)
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in sorted(client.search_model_versions(f"name='{name}'"), key=lambda m: int(m.version)):
        tags = dict(mv.tags or {})
        step, fid = tags.get("generator_step"), tags.get("fid")
        rows.append(
            {
                "version": int(mv.version),
                "generator_step": int(step) if step not in (None, "") else None,
                "fid": float(fid) if fid not in (None, "") else None,
                "protocol_id": tags.get("protocol_id"),
                "reference": version_protocol(mv).get("reference_content_hash") or tags.get("content_hash"),
                "aliases": sorted(aliases.get(str(mv.version), [])),
                "registered_at": mv.creation_timestamp,
                # a champion since replaced still carries the decision it was given: shown as replaced
                "decision": "replaced"
                if tags.get(DECISION) == CHAMPION and CHAMPION not in aliases.get(str(mv.version), [])
                else tags.get(DECISION),
                "promoted_at": tags.get(AT),
                "promoted_by": tags.get(BY),
                "reason": tags.get(REASON),
                "replaced": tags.get(REPLACED),
                "run_id": mv.run_id,
                "tags": tags,
            }
        )
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
        lines.append(
            (f"v{r['version']}", str(r["generator_step"] if r["generator_step"] is not None else "-"), fid, ref,
             ",".join(r["aliases"]) or "-", when, r["promoted_by"] or "-",
             reason if len(reason) <= width else reason[: width - 1] + "…")
        )  # fmt: skip
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(head)]
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
    champion = alias_version(client, name, CHAMPION)
    if champion is not None and same_version(champion, mv):
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
    with decision_lock(params):
        record_promotion(client, name, mv.version, why, who, champion, **extra)
    return f"{name} v{version} is the champion, promoted by {who}: {why}" + (
        f" ({comparison})" if comparison else ""
    )


def rollback(params: Params, reason: str | None) -> str:
    """The champion back to the version it replaced; returns what was done."""
    client, name, _ = _model(params)
    who = person()
    with decision_lock(params):
        champion = alias_version(client, name, CHAMPION)
        if champion is None:
            raise ConfigError(f"{name} has no champion to roll back")
        champion = client.get_model_version(name, champion.version)
        before = champion.tags.get(REPLACED)
        if not before:
            raise ConfigError(
                f"{name} v{champion.version} replaced no earlier champion: nothing to roll back to"
            )
        previous = _version(client, name, int(before))
        why = reason or "no reason given"
        crown(client, name, previous.version)
        at = now_utc()
        # `promotion.replaced` of the restored version is kept: a second rollback goes further back
        for version, decision, note, card in (
            (previous.version, CHAMPION, f"champion again: v{champion.version} rolled back by {who}: {why}",
             f"again: v{champion.version} rolled back ({who}, {at}: {why})"),
            (champion.version, "rolled back", f"rolled back by {who}: {why}", f"by {who}, {at}: {why}"),
        ):  # fmt: skip
            tag_version(client, name, version, {DECISION: decision, REASON: note, BY: who, AT: at})
            restate(client, name, version, decision, card)
    return f"{name}: champion v{champion.version} rolled back to v{previous.version} ({why})"
