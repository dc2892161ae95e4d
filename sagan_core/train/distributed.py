"""DDP plumbing: torchrun sets RANK/WORLD_SIZE/LOCAL_RANK (GROUP_RANK: the node); NCCL on GPU, gloo on CPU.

Several machines: docs/scale-out.md. Bytes travel as uint8 tensors, never pickles (no unpickling of
what another node sends).
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from sagan_core.atomic import write_atomic
from sagan_core.errors import SaganError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0  # the global rank: rank 0 of all nodes alone writes checkpoints, samples, metrics
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str, timeout_s: float = 1800) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        # SAGAN_DIST_BACKEND overrides the choice, e.g. gloo for several ranks sharing one GPU
        # (NCCL refuses two ranks on the same device).
        backend = os.environ.get("SAGAN_DIST_BACKEND") or ("nccl" if device_type == "cuda" else "gloo")
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return info


def node_name() -> str:
    """This process's node as people find it: hostname and node rank (torchrun's GROUP_RANK)."""
    return f"node {os.environ.get('GROUP_RANK', '0')} ({socket.gethostname()})"


def _gather_bytes(mine: bytes, device: torch.device) -> list[bytes]:
    """Every rank's `mine`, in rank order, on every rank."""
    world = dist.get_world_size()
    size = torch.tensor([len(mine)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = max(int(s.item()) for s in sizes)
    buf = torch.zeros(longest, dtype=torch.uint8, device=device)
    buf[: len(mine)] = torch.tensor(list(mine), dtype=torch.uint8)  # small: hashes and names
    out = [torch.zeros_like(buf) for _ in range(world)]
    dist.all_gather(out, buf)
    return [bytes(t[: int(n.item())].cpu().tolist()) for t, n in zip(out, sizes, strict=True)]


def check_same_data(content_hash: str, device: torch.device) -> None:
    """Raise on every rank when some rank's prepared data differs from rank 0's (naming its node)."""
    if not dist.is_initialized():
        return
    rows = [r.decode().split("\n") for r in _gather_bytes(f"{content_hash}\n{node_name()}".encode(), device)]
    odd = sorted({node for h, node in rows if h != rows[0][0]})
    if odd:
        raise SaganError(
            f"the prepared data differs between nodes: {', '.join(odd)} "
            f"{'has' if len(odd) == 1 else 'have'} another content hash than rank 0's {rows[0][1]} "
            f"({rows[0][0][:12]}); give every node the same data (`dvc pull` of the prepare stage's outs, "
            "or the same `sagan prepare`) and start again"
        )


def share_newest(path: Path, step_of: Callable[[Path], int | None], device: torch.device) -> None:
    """Make every rank's `path` the newest checkpoint any rank holds (no shared disk needed: whichever
    node becomes rank 0 continues)."""
    if not dist.is_initialized():
        return
    held = path.is_file()
    step = (step_of(path) or 0) if held else -1
    digest = hashlib.sha256(path.read_bytes()).digest() if held else b""
    rows = _gather_bytes(digest + step.to_bytes(8, "big", signed=True), device)
    steps = [int.from_bytes(r[-8:], "big", signed=True) for r in rows]
    src = max(range(len(rows)), key=lambda r: (steps[r], -r))  # the newest; the lowest rank among equals
    if steps[src] < 0 or all(r[:-8] == rows[src][:-8] for r in rows):
        return  # no rank has one (resume says so) or all hold the same file
    data = path.read_bytes() if dist.get_rank() == src else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=device)
    dist.broadcast(size, src)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=device)
    if dist.get_rank() == src:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src)
    if rows[dist.get_rank()][:-8] != rows[src][:-8]:
        payload = buf.cpu().numpy().tobytes()
        write_atomic(path, lambda f: f.write(payload))


# What gloo/NCCL/c10d errors say when the other side of a connection is gone or never answers.
_LOST = ("Connection closed", "Connection reset", "Broken pipe", "timed out", "Timed out", "NCCL", "gloo")


@contextmanager
def lost_peers() -> Iterator[None]:
    """A collective that fails because another rank is gone ends this rank with one line (exit 1)."""
    try:
        yield
    except RuntimeError as e:  # dist.DistError is one; gloo's lost connections are plain ones
        text = str(e)
        lost = isinstance(e, dist.DistError) or any(m in text for m in _LOST)
        if not lost or isinstance(e, SaganError) or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            raise
        first = (text.strip().splitlines() or [type(e).__name__])[0][:300]
        raise SaganError(
            f"{node_name()}, rank {os.environ.get('RANK', '?')}: lost contact with the other training "
            f"processes ({first}); a node or process is gone. Start `sagan train --resume` on every node "
            "again: it continues from the last checkpoint"
        ) from None


def broadcast_buffers(*modules: torch.nn.Module) -> None:
    """Make every rank hold rank 0's buffers (BN statistics, spectral-norm vectors)."""
    if dist.is_initialized():
        for m in modules:
            for b in m.buffers():
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
