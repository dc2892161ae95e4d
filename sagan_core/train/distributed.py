"""DDP plumbing: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; NCCL on GPU, gloo on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        # SAGAN_DIST_BACKEND overrides the choice, e.g. gloo for several ranks sharing one GPU
        # (NCCL refuses two ranks on the same device).
        backend = os.environ.get("SAGAN_DIST_BACKEND") or ("nccl" if device_type == "cuda" else "gloo")
        dist.init_process_group(backend)
    return info


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Make every rank hold rank 0's buffers (BN statistics, spectral-norm vectors)."""
    if dist.is_initialized():
        for b in module.buffers():
            dist.broadcast(b, 0)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when `flag` is true on any rank (so all ranks stop together)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
