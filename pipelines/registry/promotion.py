"""Who is champion: the FID gate of `sagan register`, and the record every promotion leaves.

The gate: the alias `champion` moves to a new version only when its FID beats the current
champion's by more than `registry.min_improvement` under the same protocol (same reference
statistics and sample count); otherwise the version gets the alias `challenger`. When the champion
was scored under another protocol (the data changed since), its registered generator is scored
again under the new version's protocol first (compare.py), so the decision is taken on equal terms;
when that cannot be done the decision says why, naming the fields that differ, in one line.

The record, on the version, as tags: `promotion.decision`, `promotion.reason`, `promotion.by` (the
gate, or the person's name), `promotion.at` (UTC), `promotion.replaced` (the champion it
replaced: what `sagan models rollback` returns to) and, for a person's promotion,
`promotion.comparison` (both FIDs under one protocol). People promote and roll back with `sagan
models` (models.py), which records the same tags. MLflow aliases and tags only, nothing hidden.

Race safety: decisions are taken under the promotion lock (pipelines/lock.py): the second of two
racing registers compares with the first's result; one champion, the better FID.
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


def error_code(e: Exception) -> str:
    """An MlflowException's code (RESOURCE_DOES_NOT_EXIST, ...); '' for other exceptions."""
    return str(getattr(e, "error_code", ""))


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
        if "RESOURCE_DOES_NOT_EXIST" in error_code(e) or "INVALID_PARAMETER_VALUE" in error_code(e):
            return None
        raise


def decide(mv, champion, min_improvement: float, why_not: str = "") -> tuple[bool, str]:
    """(promote?, reason) comparing version `mv` with the current `champion` (or None) under `mv`'s
    protocol: the champion's own FID, or its score under `mv`'s protocol when it was scored again
    (compare.py). `why_not`: why the champion could not be scored again, for the reason."""
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
    gain = c_fid - fid
    if gain > min_improvement:
        return True, (
            f"FID {fid:.4g} beats champion v{champion.version}'s {c_fid:.4g}{again} by {gain:.4g} "
            f"> min_improvement {min_improvement:g}"
        )
    return False, (
        f"FID {fid:.4g} does not beat champion v{champion.version}'s {c_fid:.4g}{again} by more than "
        f"min_improvement {min_improvement:g}"
    )


def current_standing(client, name: str, mv) -> tuple[str, str]:
    """(what it is now, the recorded reason) of a version decided before: champion while it holds
    the alias; else its recorded decision (challenger, rolled back; a champion since replaced)."""
    champion = alias_version(client, name, CHAMPION)
    reason = mv.tags.get(REASON, "")
    if champion is not None and same_version(champion, mv):
        return CHAMPION, f"{reason} (decided before; kept)"
    recorded = mv.tags.get(DECISION, CHALLENGER)
    return ("replaced" if recorded == CHAMPION else recorded), f"{reason} (decided before; kept)"


def gate(client, params: Params, name: str, mv) -> tuple[str, str]:
    """The FID gate for a new version `mv`: (decision, reason), aliases and tags set."""
    why_not = _score_champion(client, params, name, mv)
    with promotion_lock(redact(tracking_uri(params)), name):
        return _promote(client, name, mv, params.registry.min_improvement, why_not)


def _score_champion(client, params: Params, name: str, mv) -> str:
    """Make the champion comparable with `mv` (scored again under `mv`'s protocol when it was
    scored under another); '' when it is, else why not (the decision then says so in one line)."""
    champion = alias_version(client, name, CHAMPION)
    if champion is None or same_version(champion, mv):
        return ""
    try:
        score_under(client, params, name, champion, version_protocol(mv))
        return ""
    except SaganError as e:
        log.warning("%s", e)
        return str(e)


def tag_version(client, name: str, version, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def restate(client, name: str, version, decision: str, reason: str) -> None:
    """The model card's promotion line (model_card.version_card) says what the version is now: a
    card written at registration would go on saying `champion` after a person's rollback."""
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
    """The champion alias to `version`, with who, when, why and which champion it replaced; `more`:
    further `promotion.*` tags (a person's promotion records the comparison it was shown)."""
    crown(client, name, version)
    tags = {DECISION: CHAMPION, REASON: reason, BY: by, AT: now_utc()}
    if replaced is not None and str(replaced.version) != str(version):
        tags[REPLACED] = str(replaced.version)
    tags |= {f"promotion.{key}": value for key, value in more.items()}
    tag_version(client, name, version, tags)
    restate(client, name, version, CHAMPION, f"{reason} ({by}, {tags[AT]})")
    if replaced is not None and str(replaced.version) != str(version):
        restate(
            client, name, replaced.version, "replaced", f"v{version} became the champion ({by}, {tags[AT]})"
        )


def _promote(client, name: str, mv, min_improvement: float, why_not: str = "") -> tuple[str, str]:
    """Decide and set the alias of version `mv` (under the promotion lock); (decision, reason)."""
    champion = alias_version(client, name, CHAMPION)
    if champion is not None and not same_version(champion, mv):
        champion = client.get_model_version(name, champion.version)  # with the tags compare.py set
    promote, reason = decide(mv, champion, min_improvement, why_not)
    if promote:
        record_promotion(client, name, mv.version, reason, GATE, champion)
        return CHAMPION, reason
    client.set_registered_model_alias(name, CHALLENGER, mv.version)
    tag_version(client, name, mv.version, {DECISION: CHALLENGER, REASON: reason, BY: GATE, AT: now_utc()})
    return CHALLENGER, reason
