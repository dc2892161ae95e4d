"""What `train.precision/channels_last/compile/compile_mode` resolve to on a device, in one place.

precision auto: bf16 autocast on CUDA and on CPUs with bf16 matrix units (AMX, AVX512-BF16), fp32
elsewhere; spectral norm and Inception stay fp32. channels_last auto: CUDA and CPU (oneDNN's NHWC
is 1.3x faster on CPU too; BENCHMARKS.md). Adam: the fused kernel on CPU and CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sagan_core.config import TrainConfig


def cpu_has_bf16_units() -> bool:
    """AMX tiles or AVX512-BF16 (a torch without the public probe: no)."""
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(caps.get("amx_tile") or caps.get("avx512_bf16"))


@dataclass(frozen=True)
class StepPlan:
    bf16: bool
    channels_last: bool
    compile: bool
    compile_mode: str

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device):
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)


def plan(cfg: TrainConfig, device: torch.device) -> StepPlan:
    on_cuda = device.type == "cuda"
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and (on_cuda or cpu_has_bf16_units()))
    channels_last = cfg.channels_last == "yes" or (
        cfg.channels_last == "auto" and device.type in ("cuda", "cpu")
    )
    return StepPlan(bf16, channels_last, cfg.compile, cfg.compile_mode)


def adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float], device: torch.device):
    """Adam, one fused kernel (CPU, CUDA) or foreach ops: same rule, other rounding."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused, foreach=None if fused else True)
