"""Rejected files (`{"file", "reason"}`, the kind before ':'): a prepare failing for them names the
top kinds in its one line and lists every file in `<data.prepared_dir>.rejected.json`, which the
next prepare that succeeds removes (its manifest lists them then)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

from sagan_core.atomic import write_json
from sagan_core.config import DataConfig
from sagan_core.errors import SaganError

TOP = 3  # kinds named in the error line


def rejection_summary(manifest: dict[str, Any]) -> dict[str, int]:
    """{'truncated': 2, 'too small': 1, ...}: counts per reason (the part before ':')."""
    return dict(sorted(Counter(r["reason"].split(":", 1)[0] for r in manifest["rejected"]).items()))


def rejected_path(prepared_dir: str | Path) -> Path:
    path = Path(prepared_dir)
    return path.with_name(path.name + ".rejected.json")


def fail(cfg: DataConfig, what: str, rejected: list[dict[str, str]]) -> NoReturn:
    """One line naming the most frequent reasons (`too small: 3900 (short side under data.min_size 64),
    truncated: 2`); every file in the rejected_path record."""
    path = rejected_path(cfg.prepared_dir)
    by_reason = rejection_summary({"rejected": rejected})
    record = {"source": cfg.source, "error": what, "num_rejected": len(rejected), "by_reason": by_reason}
    record["rejected"] = rejected
    counts = sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    hints = {
        "too small": f" (short side under data.min_size {cfg.min_size})",
        "decompression bomb": f" (data.max_pixels {cfg.max_pixels})",
    }
    top = [f"{kind}: {n}{hints.get(kind, '')}" for kind, n in counts[:TOP]]
    if len(counts) > TOP:
        top.append(f"{sum(n for _, n in counts[TOP:])} for {len(counts) - TOP} other reasons")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)
        where = f"per-file reasons in {path}"
    except OSError as e:  # the error itself matters more than its list
        where = f"per-file reasons not written ({path}: {e.strerror or e})"
    raise SaganError(f"data.source {cfg.source!r}: {what}: {', '.join(top)}; {where}")
