"""What a training checkpoint holds, gathered from a Trainer and put back into one (exact resume).

Layout: sagan_core/checkpoint.py. Every random draw of training comes from state saved here (the
noise generator, torch's CPU/CUDA RNG, the loader's (epoch, cursor)), so a resumed run continues
bit for bit where an uninterrupted one would be.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .errors import ConfigError
from .model import ModelSpec

if TYPE_CHECKING:
    from .trainer import Trainer


def gather(t: Trainer) -> dict[str, Any]:
    rng: dict[str, Any] = {"noise": t.noise.get_state(), "cpu": torch.get_rng_state()}
    if t.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(t.device)
    return {
        "step": t.step,
        "spec": t.spec.to_dict(),
        "class_names": t.class_names,
        "generator": t.G.state_dict(),
        "generator_ema": t.G_ema.module.state_dict(),
        "ema_n_averaged": t.G_ema.n_averaged.detach().clone(),
        "discriminator": t.D.state_dict(),
        "opt_g": t.opt_g.state_dict(),
        "opt_d": t.opt_d.state_dict(),
        "rng": rng,
        "loader": t.loader.state_dict(),
        "params": t.params.model_dump(),
    }


def restore(t: Trainer, ckpt: dict[str, Any]) -> None:
    """Refuses (ConfigError) a checkpoint of another architecture, naming what differs."""
    saved = ModelSpec.from_dict(ckpt["spec"])
    if saved != t.spec:
        now = t.spec.to_dict()
        diff = [f"{k}={v} (params: {now[k]})" for k, v in saved.to_dict().items() if v != now[k]]
        raise ConfigError(
            f"--resume: the checkpoint was trained with {', '.join(diff)}; "
            "restore those params or train from scratch"
        )
    t.G.load_state_dict(ckpt["generator"])
    t.G_ema.module.load_state_dict(ckpt["generator_ema"])
    t.G_ema.n_averaged.copy_(ckpt["ema_n_averaged"])
    t.D.load_state_dict(ckpt["discriminator"])
    t.opt_g.load_state_dict(ckpt["opt_g"])
    t.opt_d.load_state_dict(ckpt["opt_d"])
    t.noise.set_state(ckpt["rng"]["noise"])
    torch.set_rng_state(ckpt["rng"]["cpu"])
    if t.device.type == "cuda" and "cuda" in ckpt["rng"]:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"], t.device)
    t.loader.load_state_dict(ckpt["loader"])
    t.step = int(ckpt["step"])
