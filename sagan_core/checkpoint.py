"""Training checkpoints: one file, written atomically, loadable with `weights_only=True`.

Layout (all plain tensors, dicts, lists and numbers):
  step, spec (ModelSpec as dict), class_names, generator, generator_ema, discriminator,
  opt_g, opt_d, rng {noise, cpu, cuda}, loader {epoch, cursor}, params (the validated params).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

from .errors import ConfigError, SaganError
from .model import Generator, ModelSpec


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write via `write(file)` to a temp file in the same directory, fsync, rename: a crash leaves
    the old file intact (never a half-written one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save, atomically (see write_atomic)."""
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
