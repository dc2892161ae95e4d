"""Training checkpoints: one file, written atomically, loadable with `weights_only=True`.

Layout (all plain tensors, dicts, lists and numbers):
  step, spec (ModelSpec as dict), class_names, generator, generator_ema, discriminator,
  opt_g, opt_d, rng {noise, cpu, cuda}, loader {epoch, cursor}, params (the validated params).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .atomic import write_atomic
from .errors import ConfigError, SaganError
from .model import Generator, ModelSpec


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save, atomically (sagan_core.atomic)."""
    write_atomic(path, lambda f: torch.save(obj, f))


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no checkpoint (run `sagan train` first)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises many types for truncated / foreign files
        raise SaganError(f"{path}: not a readable sagan checkpoint ({type(e).__name__}: {e})") from None
    missing = {"step", "spec", "generator", "generator_ema", "discriminator"} - set(
        ckpt if isinstance(ckpt, dict) else ()
    )
    if missing:
        raise SaganError(f"{path}: not a sagan checkpoint (missing {', '.join(sorted(missing))})")
    return ckpt


def load_generator(
    path: str | Path, use_ema: bool = True, device: str | torch.device = "cpu"
) -> tuple[Generator, dict[str, Any]]:
    """The (EMA) generator of a checkpoint in eval mode, plus the checkpoint's metadata."""
    ckpt = load(path)
    spec = ModelSpec.from_dict(ckpt["spec"])
    g = Generator(spec)
    state = ckpt["generator_ema" if use_ema else "generator"]
    try:
        g.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise SaganError(f"{path}: weights do not match the architecture recorded in it ({first})") from None
    meta = {k: ckpt[k] for k in ("step", "spec", "class_names", "params") if k in ckpt}
    return g.to(device).eval(), meta
