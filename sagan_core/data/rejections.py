"""Rejected files: their counts per reason, and what a prepare that fails for them says and leaves.

A rejection is `{"file", "reason"}`; the reason's prefix before ':' is its kind (prepare.py lists
them). A prepared dataset lists its rejections in its manifest. A prepare that fails for them (no
valid image, or more than data.max_rejected_fraction rejected) writes no manifest: its one-line
error names the most frequent kinds with their counts (and the key behind `too small`), and the
per-file reasons go to `<data.prepared_dir>.rejected.json` beside the prepared folder (written
atomically; the prepared folder itself is left as it was). The next prepare that succeeds removes
that file: its manifest lists the rejections then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NoReturn

from sagan_core.atomic import write_json
from sagan_core.config import DataConfig
from sagan_core.errors import SaganError

TOP = 3  # kinds named in the error line


def rejection_summary(manifest: dict[str, Any]) -> dict[str, int]:
    """{'truncated': 2, 'too small': 1, ...}: counts per reason (the part before ':')."""
    counts: dict[str, int] = {}
    for r in manifest["rejected"]:
        kind = r["reason"].split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return dict(sorted(counts.items()))


def rejected_path(prepared_dir: str | Path) -> Path:
    """Where a failed prepare lists its rejections: `data/prepared` -> `data/prepared.rejected.json`."""
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
    """Write the per-file reasons beside data.prepared_dir, then raise the one-line error:
    `data.source 'x': WHAT: too small: 3900 (...); per-file reasons in data/prepared.rejected.json`."""
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
    """A prepare that succeeded: the list of an earlier failed one is no longer true."""
    rejected_path(cfg.prepared_dir).unlink(missing_ok=True)
