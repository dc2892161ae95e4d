"""Who is champion: the FID gate of `sagan register` and the `promotion.*` tags every decision leaves.

`champion` moves only when the new FID beats the champion's by more than `registry.min_improvement`
under one protocol (the champion scored again under the new one where they differ: compare.py), else
the version is `challenger`. The tags (decision, reason, by, at, replaced: what `sagan models
rollback` returns to) are plain MLflow tags. Decisions run under pipelines.lock.promotion_lock: the
second of two racing registers compares with the first's result.
"""

from __future__ import annotations

import logging
import time

from pipelines.lock import promotion_lock
from pipelines.registry.compare import fid_under, score_under, version_protocol
from pipelines.registry.model_card import promotion_line
from pipelines.tracking.store import redact, tracking_uri
from sagan_core.config import Params
from sagan_core.errors import SaganError
from sagan_core.evaluate.identity import protocol_difference

log = logging.getLogger("sagan.registry")
CHAMPION, CHALLENGER = "champion", "challenger"
DECISION, REASON, BY, AT, REPLACED = (
    f"promotion.{k}" for k in ("decision", "reason", "by", "at", "replaced")
)
GATE = "sagan register (FID gate)"  # promotion.by of the gate's decisions; people's carry their name


def same_version(a, b) -> bool:
    """MLflow returns a version number as int from some calls (by alias) and str from others."""
    return str(a.version) == str(b.version)


def now_utc() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def decide(mv, champion, min_improvement: float, why_not: str = "") -> tuple[bool, str]:
    """(promote?, reason) of version `mv` against `champion` (or None) under `mv`'s protocol;
    `why_not`: why the champion could not be scored again."""
    fid = float(mv.tags["fid"])
    if champion is None:
        return True, f"no champion yet; FID {fid:.4g}"
    if same_version(champion, mv):
        return True, f"already the champion; FID {fid:.4g}"
    c_fid = fid_under(champion, mv.tags.get("protocol_id", ""))
    if c_fid is None:
        differs = protocol_difference(version_protocol(champion), version_protocol(mv))
        return False, (
            f"champion v{champion.version} was evaluated under another protocol ({differs}) and has "
            f"no score under this one{': ' + why_not if why_not else ''}; FIDs are not comparable"
        )
    same = champion.tags.get("protocol_id") == mv.tags.get("protocol_id")
    again = "" if same else " (scored again under this protocol)"
    theirs = f"champion v{champion.version}'s {c_fid:.4g}{again}"
    if (gain := c_fid - fid) > min_improvement:
        return True, f"FID {fid:.4g} beats {theirs} by {gain:.4g} > min_improvement {min_improvement:g}"
    return False, f"FID {fid:.4g} does not beat {theirs} by more than min_improvement {min_improvement:g}"


def current_standing(client, name: str, mv) -> tuple[str, str]:
    """(what it is now, the recorded reason) of a version decided before."""
    champion = alias_version(client, name, CHAMPION)
    reason = mv.tags.get(REASON, "")
    if champion is not None and same_version(champion, mv):
        return CHAMPION, f"{reason} (decided before; kept)"
    recorded = mv.tags.get(DECISION, CHALLENGER)
    return ("replaced" if recorded == CHAMPION else recorded), f"{reason} (decided before; kept)"


def decision_lock(params: Params):
    """The register's and people's (`sagan models`) alias decisions on this model take turns."""
    return promotion_lock(redact(tracking_uri(params)), params.registry.model_name)


def gate(client, params: Params, name: str, mv) -> tuple[str, str]:
    """The FID gate for a new version `mv`: (decision, reason), aliases and tags set. The champion is
    first scored under `mv`'s protocol where needed, outside the lock (`why_not`: why it could not be)."""
    why_not, champion = "", alias_version(client, name, CHAMPION)
    if champion is not None and not same_version(champion, mv):
        try:
            score_under(client, params, name, champion, version_protocol(mv))
        except SaganError as e:
            log.warning("%s", e)
            why_not = str(e)
    with decision_lock(params):
        champion = alias_version(client, name, CHAMPION)
        if champion is not None and not same_version(champion, mv):
            champion = client.get_model_version(name, champion.version)  # with the tags compare.py set
        promote, reason = decide(mv, champion, params.registry.min_improvement, why_not)
        if promote:
            record_promotion(client, name, mv.version, reason, GATE, champion)
            return CHAMPION, reason
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
        tag_version(client, name, mv.version, {DECISION: CHALLENGER, REASON: reason, BY: GATE, AT: now_utc()})
        return CHALLENGER, reason


def tag_version(client, name: str, version, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def restate(client, name: str, version, decision: str, reason: str) -> None:
    """The card's promotion line says what the version is now (not `champion` after a rollback)."""
    mv = client.get_model_version(name, str(version))
    lines = (mv.description or "").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("**Promotion:"):
            lines[i] = promotion_line(decision, reason)
            client.update_model_version(name, str(version), description="\n".join(lines) + "\n")
            return


def crown(client, name: str, version) -> None:
    """The champion alias to `version`; a version is champion or challenger, never both."""
    client.set_registered_model_alias(name, CHAMPION, str(version))
    challenger = alias_version(client, name, CHALLENGER)
    if challenger is not None and str(challenger.version) == str(version):
        client.delete_registered_model_alias(name, CHALLENGER)


def record_promotion(client, name: str, version, reason: str, by: str, replaced=None, **more: str) -> None:
    """The champion alias to `version`, tagged who, when, why, what it replaced and `more`."""
    crown(client, name, version)
    tags = {DECISION: CHAMPION, REASON: reason, BY: by, AT: now_utc()}
    if replaced is not None and str(replaced.version) != str(version):
        tags[REPLACED] = str(replaced.version)
    tag_version(client, name, version, tags | {f"promotion.{key}": value for key, value in more.items()})
    restate(client, name, version, CHAMPION, f"{reason} ({by}, {tags[AT]})")
    if REPLACED in tags:
        restate(client, name, tags[REPLACED], "replaced",
                f"v{version} became the champion ({by}, {tags[AT]})")

