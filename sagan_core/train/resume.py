"""Whether and how `train.checkpoint` is continued: `sagan train --resume` always (warning per changed
key that shapes the weights); the flow only a checkpoint with the run's fingerprint (`decide`), so a
retried train ends exactly where an uninterrupted one would."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sagan_core.errors import ConfigError
from sagan_core.model import checkpoint
from sagan_core.model.networks import ModelSpec
from sagan_core.train import fingerprint

log = logging.getLogger("sagan.train")


def start_step(path: Path) -> int:
    """The step `--resume` continues from; a ConfigError (one line, exit 2) when there is no checkpoint."""
    if not path.exists():
        raise ConfigError(f"--resume: no checkpoint at {path} (train without --resume first)")
    return checkpoint.step_of(path) or 0


def decide(params, data_hash: str, force: bool) -> tuple[bool, str]:
    """(resume?, why) for the flow: only a checkpoint with this fingerprint, not past train.steps."""
    path = params.train.checkpoint
    if force:
        return False, "force: training from step 0"
    if not path.exists():
        return False, "no checkpoint: training from step 0"
    ckpt = checkpoint.peek(path)
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


def load(path: Path, spec: ModelSpec, device: torch.device, now: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint to continue: another `spec` is an error, a changed fingerprint input a warning."""
    start_step(path)
    ckpt = checkpoint.load(path, map_location=device, keys=checkpoint.RESUME)
    saved = ModelSpec.from_dict(ckpt["spec"])
    if saved != spec:
        want = spec.to_dict()
        diff = [f"{k}={v} (params: {want[k]})" for k, v in saved.to_dict().items() if v != want[k]]
        raise ConfigError(f"--resume: the checkpoint was trained with {', '.join(diff)}; restore those params or train from scratch")
    if "fingerprint" in ckpt and (changed := fingerprint.changes(ckpt["fingerprint"], now)):
        log.warning("--resume: what shaped the checkpoint changed (%s); training goes on, no longer bit-exact", "; ".join(changed))
    return ckpt
