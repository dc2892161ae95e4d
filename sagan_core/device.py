"""The one device resolver: `auto | cpu | cuda | cuda:N` (validated in config) -> torch.device."""

from __future__ import annotations

import torch

from sagan_core.errors import ConfigError


def resolve_device(name: str, key: str = "device", local_rank: int = 0) -> torch.device:
    """`auto` is CUDA when present, else CPU; plain `cuda` is this DDP rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {name!r} requested but no CUDA device is available")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)
