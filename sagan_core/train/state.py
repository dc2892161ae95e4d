"""What training changes and a checkpoint keeps: modules, optimizers, step, every RNG, the loader's
position and LeCam's anchors, so that a loaded state continues bit for bit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.swa_utils import AveragedModel

from sagan_core.data.dataset import BatchLoader
from sagan_core.errors import SaganError
from sagan_core.model.networks import Discriminator, Generator, ModelSpec

log = logging.getLogger("sagan.train")


@dataclass
class TrainState:
    spec: ModelSpec
    G: Generator
    G_ema: AveragedModel  # of G's parameters; .module is the EMA generator
    D: Discriminator
    opt_g: Optimizer
    opt_d: Optimizer
    noise: torch.Generator  # z and fake labels
    loader: BatchLoader
    device: torch.device
    step: int = 0
    augment: torch.Generator | None = None  # DiffAugment's draws (train.diffaug; None: off)
    lecam: torch.Tensor | None = None  # LeCam's anchors [α_R, α_F] (train.lecam_weight; None: none yet)

    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"noise": self.noise.get_state(), "cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.augment is not None:
            rng["augment"] = self.augment.get_state()
        return {
            "step": self.step,
            "spec": self.spec.to_dict(),
            "generator": self.G.state_dict(),
            "generator_ema": self.G_ema.module.state_dict(),
            "ema_n_averaged": self.G_ema.n_averaged.detach().clone(),
            "discriminator": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": rng,
            "loader": self.loader.state_dict(),
        } | ({} if self.lecam is None else {"lecam": self.lecam.detach().clone()})

    def load_state_dict(self, ckpt: dict[str, Any], path: Path) -> None:
        parts = [  # in this order: the order that made resume bit-exact
            ("generator", self.G.load_state_dict),
            ("generator_ema", self.G_ema.module.load_state_dict),
            ("ema_n_averaged", self.G_ema.n_averaged.copy_),
            ("discriminator", self.D.load_state_dict),
            ("opt_g", self.opt_g.load_state_dict),
            ("opt_d", self.opt_d.load_state_dict),
            ("rng", self._set_rng),
            ("loader", self.loader.load_state_dict),
        ]
        for key, put in parts:
            try:
                put(ckpt[key])
            except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
                reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise SaganError(f"{path}: damaged checkpoint: {key} does not fit ({reason})") from None
        anchors = ckpt.get("lecam")  # None: written with LeCam off, or before its first D step
        fits = torch.is_tensor(anchors) and anchors.shape == (2,) and anchors.is_floating_point()
        if anchors is not None and not fits:
            raise SaganError(f"{path}: damaged checkpoint: lecam does not fit (expected 2 anchors)")
        self.lecam = anchors.to(self.device, torch.float32) if fits else None
        self.step = int(ckpt["step"])

    def _set_rng(self, rng: dict[str, Any]) -> None:
        self.noise.set_state(rng["noise"])
        torch.set_rng_state(rng["cpu"])
        if self.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        if self.augment is not None and "augment" in rng:
            self.augment.set_state(rng["augment"])

    def apply_optimizer_params(self, cfg) -> None:
        """`--resume --set train.lr_g=...`: the params win over the loaded optimizer, said once."""
        betas, said = (float(cfg.beta1), float(cfg.beta2)), set()
        for opt, lr_key, lr in ((self.opt_g, "train.lr_g", cfg.lr_g), (self.opt_d, "train.lr_d", cfg.lr_d)):
            for group in opt.param_groups:
                olds = (group["lr"], *group["betas"])
                for key, old, new in zip((lr_key, "train.beta1", "train.beta2"), olds, (lr, *betas)):
                    if old != new and key not in said:
                        said.add(key)
                        log.warning("%s: %s -> %s (applied on resume; no longer bit-exact)", key, old, new)
                group["lr"], group["betas"] = lr, betas

    def nonfinite(self) -> list[str]:
        """The parts holding inf/NaN: weights and optimizer moments (a NaN exp_avg_sq spoils every
        later update while the weights stay finite a while)."""
        bad = []
        for name, net, opt in (("generator", self.G, self.opt_g), ("discriminator", self.D, self.opt_d)):
            moments = [
                v for s in opt.state.values() for k, v in s.items() if k != "step" and torch.is_tensor(v)
            ]
            for part, tensors in (("weights", list(net.parameters())), ("optimizer state", moments)):
                if tensors and not torch.stack([x.isfinite().all() for x in tensors]).all():
                    bad.append(f"{name} {part}")
        return bad
