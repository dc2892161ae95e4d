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


def top_reasons(rejected: list[dict[str, str]], cfg: DataConfig) -> str:
    """`too small: 3900 (short side under data.min_size 64), truncated: 2`: the most frequent first."""
    counts = sorted(rejection_summary({"rejected": rejected}).items(), key=lambda kv: (-kv[1], kv[0]))
    hints = {
        "too small": f" (short side under data.min_size {cfg.min_size})",
        "decompression bomb": f" (data.max_pixels {cfg.max_pixels})",
    }
    shown = [f"{kind}: {n}{hints.get(kind, '')}" for kind, n in counts[:TOP]]
    if len(counts) > TOP:
        shown.append(f"{sum(n for _, n in counts[TOP:])} for {len(counts) - TOP} other reasons")
    return ", ".join(shown)


def fail(cfg: DataConfig, what: str, rejected: list[dict[str, str]]) -> NoReturn:
    path = rejected_path(cfg.prepared_dir)
    record = {
        "source": cfg.source,
        "error": what,
        "num_rejected": len(rejected),
        "by_reason": rejection_summary({"rejected": rejected}),
        "rejected": rejected,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)
        where = f"per-file reasons in {path}"
    except OSError as e:  # the error itself matters more than its list
        where = f"per-file reasons not written ({path}: {e.strerror or e})"
    raise SaganError(f"data.source {cfg.source!r}: {what}: {top_reasons(rejected, cfg)}; {where}")


def clear(cfg: DataConfig) -> None:
    rejected_path(cfg.prepared_dir).unlink(missing_ok=True)
