"""The checkpoint file: written atomically, read only here, with `weights_only=True`; every way a
file can fail to be one is one SaganError line. Keys: TrainState.state_dict plus class_names,
params, fingerprint, best; best.pt adds best_metric/best_value; step_NNNNNN.pt are copies.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from sagan_core.atomic import write_atomic
from sagan_core.errors import ConfigError, SaganError
from sagan_core.model.networks import Generator, ModelSpec

REQUIRED = ("step", "spec", "generator", "generator_ema", "discriminator")  # what sampling needs
RESUME = (*REQUIRED, "ema_n_averaged", "opt_g", "opt_d", "rng", "loader")  # TrainState.state_dict
_SPEC_TYPES = {"int": (int,), "float": (int, float), "str": (str,)}


def save_atomic(obj: Any, path: str | Path) -> None:
    write_atomic(path, lambda f: torch.save(obj, f))


def _unreadable(e: Exception) -> str:
    """torch's reason in one line; never its advice to retry with weights_only=False (runs code)."""
    if isinstance(e, pickle.UnpicklingError):
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        return f"it holds Python objects that are not plain data{what}; refused unread"
    first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    return f"{type(e).__name__}: {first[0][:200] if first else ''}"


def _spec_problem(spec: Any) -> str | None:
    if not isinstance(spec, dict):
        return f"spec: expected a mapping, got {type(spec).__name__}"
    fields = {f.name: f.type for f in dataclasses.fields(ModelSpec)}  # "int", "tuple[int, ...]", ...
    if unknown := sorted(map(str, spec.keys() - fields.keys())):
        return f"spec: unknown {', '.join(unknown)}"
    if missing := sorted(fields.keys() - spec.keys()):
        return f"spec: missing {', '.join(missing)}"
    for name, value in spec.items():
        if fields[name].startswith("tuple"):
            want, ok = "a list of int", isinstance(value, list | tuple) and all(type(v) is int for v in value)
        else:
            want = fields[name]
            ok = isinstance(value, _SPEC_TYPES[want]) and not isinstance(value, bool)
        if not ok:
            return f"spec.{name}: expected {want}, got {value!r}"
    return None


def load(
    path: str | Path, map_location: str | torch.device = "cpu", keys: tuple[str, ...] = REQUIRED
) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no checkpoint (run `sagan train` first)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise SaganError(f"{path}: not a sagan checkpoint: {_unreadable(e)}") from None
    if missing := [k for k in keys if k not in (ckpt if isinstance(ckpt, dict) else ())]:
        raise SaganError(f"{path}: not a sagan checkpoint (missing {', '.join(missing)})")
    if problem := _spec_problem(ckpt["spec"]):
        raise SaganError(f"{path}: damaged checkpoint: {problem}")
    return ckpt


def load_generator(
    path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[Generator, dict[str, Any]]:
    ckpt = load(path)
    try:
        g = Generator(ModelSpec.from_dict(ckpt["spec"]))
    except (ConfigError, KeyError, ValueError) as e:  # well-typed values no network has
        raise SaganError(f"{path}: damaged checkpoint: spec describes no valid model ({e})") from None
    state = ckpt["generator_ema" if use_ema else "generator"]
    try:
        g.load_state_dict(state)
    except (RuntimeError, TypeError) as e:  # TypeError: not a state dict at all
        first = str(e).splitlines()[0]
        raise SaganError(f"{path}: weights do not match the architecture recorded in it ({first})") from None
    keys = ("step", "spec", "class_names", "params", "best_metric", "best_value")  # best_*: best.pt
    meta = {k: ckpt[k] for k in keys if k in ckpt}
    return g.to(device).eval(), meta


def keep_step(ckpt: dict[str, Any], path: Path, keep: int) -> None:
    """train.keep_checkpoints: `ckpt` also at `path`, then the oldest step files beyond `keep` go."""
    if keep <= 0:
        return
    save_atomic(ckpt, path)
    for old in sorted(path.parent.glob("step_[0-9]*.pt"))[:-keep]:  # zero-padded: name order is step order
        old.unlink(missing_ok=True)


def peek(path: str | Path) -> dict[str, Any] | None:
    """The checkpoint memory-mapped (for its step, fingerprint); None when unreadable: not resumable."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        int(ckpt["step"])
        return ckpt
    except Exception:  # missing, truncated or foreign
        return None


def step_of(path: str | Path) -> int | None:
    ckpt = peek(path)
    return None if ckpt is None else int(ckpt["step"])


def resolve(train_cfg, which: str | Path) -> Path:
    """ "best" (best.pt, else the last), "last" (checkpoint.pt) or a path."""
    if str(which) == "best":
        return train_cfg.best_checkpoint if train_cfg.best_checkpoint.exists() else train_cfg.checkpoint
    return train_cfg.checkpoint if str(which) == "last" else Path(which)


def candidate(params) -> tuple[Path, str, str]:
    """(path, "best" | "last", why) of the checkpoint `eval.checkpoint` names."""
    which = params.eval.checkpoint
    path = resolve(params.train, which)
    if path == params.train.best_checkpoint:
        return path, "best", f"eval.checkpoint=best: the best in-training {params.train.select_metric}"
    if which == "best":
        why = "eval.checkpoint=best, but no in-training evaluation wrote best.pt: the last checkpoint"
        return path, "last", why
    return path, "last", "eval.checkpoint=last: the last checkpoint"
