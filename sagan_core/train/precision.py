"""How a training step runs: autocast dtype, memory format, optimizer kernel, torch.compile.

What `train.precision`, `train.channels_last`, `train.compile` and `train.compile_mode` resolve to
on a device, decided in one place so that the trainer, the benchmarks and the tests agree:

- precision `auto`: bf16 autocast on CUDA, and on CPUs with native bf16 matrix units (AMX or
  AVX512-BF16, `cpu_has_bf16_units`), where bf16 convolutions/matmuls run on hardware instead of
  being emulated; fp32 elsewhere. Spectral norm stays fp32 under autocast (layers.py); FID/IS/KID
  never use autocast (inception.exact_fp32).
- channels_last `auto`: on CUDA and on CPU (oneDNN's NHWC convolutions are 1.3x faster for this
  model on CPU too; BENCHMARKS.md).
- compile: `torch.compile(mode=compile_mode)`; `reduce-overhead` = CUDA graphs on CUDA (the
  demo-size step is launch-bound on a GPU), for which every step marks a new graph step.
- Adam: the fused kernel where torch has one for the device (CPU and CUDA), else foreach.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from collections.abc import Iterable

    from sagan_core.config import TrainConfig


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX tiles or the AVX512-BF16 extension).

    torch.cpu's probes read CPUID (they are private, hence the fallbacks: no probe means no)."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


@dataclass(frozen=True)
class StepPlan:
    """The resolved settings of a training step on one device."""

    bf16: bool
    channels_last: bool
    compile: bool
    compile_mode: str

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def cuda_graphs(self) -> bool:
        return self.compile and self.compile_mode == "reduce-overhead"

    def autocast(self, device: torch.device):
        """bf16 autocast when planned, else a disabled one (a no-op context)."""
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def describe(self) -> dict[str, object]:
        return {
            "bf16": self.bf16,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "compile_mode": self.compile_mode,
        }


def plan(cfg: TrainConfig, device: torch.device) -> StepPlan:
    on_cuda = device.type == "cuda"
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and (on_cuda or cpu_has_bf16_units()))
    channels_last = cfg.channels_last == "yes" or (
        cfg.channels_last == "auto" and device.type in ("cuda", "cpu")
    )
    return StepPlan(bf16, channels_last, cfg.compile, cfg.compile_mode)


def adam(params: Iterable[torch.nn.Parameter], lr: float, betas: tuple[float, float], device: torch.device):
    """Adam with all parameters updated by one fused kernel (CPU, CUDA) or foreach ops (elsewhere).

    Same update rule as the per-parameter loop; only the kernels (and so the rounding) differ."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, betas=betas, fused=fused, foreach=None if fused else True)


def compiled(module: torch.nn.Module, p: StepPlan) -> torch.nn.Module:
    return torch.compile(module, mode=p.compile_mode) if p.compile else module


def begin_step(p: StepPlan) -> None:
    """CUDA graphs reuse their output memory: tell them a new training step starts."""
    if p.cuda_graphs:
        torch.compiler.cudagraph_mark_step_begin()
