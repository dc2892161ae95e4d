"""When the flow's train task resumes a checkpoint instead of training from step 0.

A checkpoint is resumed only when it was made from the same data and the same params that shape
the weights (a retried task, or a rerun after a crash or kill -9); `--resume` is bit-exact, so the
result equals an uninterrupted run. The checkpoint itself records what made it (its `fingerprint`,
sagan_core/train/fingerprint.py): a stale checkpoint (other data or training params) is never resumed.
"""

from __future__ import annotations

from pathlib import Path

from sagan_core.config import Params
from sagan_core.train import fingerprint

STATE_DIR = Path(".sagan/pipeline")  # the flow's own files (run history: pipelines/flow/report.py)


def _checkpoint_head(path: Path) -> dict | None:
    """The checkpoint (memory-mapped: nothing large is read); None when missing, truncated or foreign."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        int(ckpt["step"])
        return ckpt
    except Exception:  # missing, truncated or foreign: not resumable
        return None


def checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint; None when it is missing, truncated or foreign."""
    ckpt = _checkpoint_head(path)
    return None if ckpt is None else int(ckpt["step"])


def resume_decision(params: Params, data_hash: str, force: bool) -> tuple[bool, str]:
    """(resume?, why): resume only a checkpoint of this very run that is not past train.steps."""
    ckpt_path = params.train.checkpoint
    if force:
        return False, "force: training from step 0"
    if not ckpt_path.exists():
        return False, "no checkpoint: training from step 0"
    ckpt = _checkpoint_head(ckpt_path)
    if ckpt is None:
        return False, "checkpoint is unreadable: training from step 0"
    now = fingerprint.record(params, data_hash)
    saved = ckpt.get("fingerprint") or {}
    if saved.get("sha256") != now["sha256"]:
        changed = fingerprint.changes(saved, now) if saved else ["it records no fingerprint"]
        return False, f"checkpoint is stale ({'; '.join(changed)[:500]}): training from step 0"
    step = int(ckpt["step"])
    if step > params.train.steps:
        return False, f"checkpoint step {step} does not fit train.steps={params.train.steps}: from step 0"
    return True, f"resuming from the checkpoint at step {step}"
