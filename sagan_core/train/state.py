"""What a training checkpoint holds, gathered from a Trainer and put back into one (exact resume).

Layout: sagan_core/model/checkpoint.py. Every random draw of training comes from state saved here (the
noise generator, torch's CPU/CUDA RNG, the loader's (epoch, cursor)), so a resumed run continues
bit for bit where an uninterrupted one would be.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from sagan_core.errors import ConfigError, SaganError
from sagan_core.model import checkpoint as ckpt_io
from sagan_core.model.networks import ModelSpec
from sagan_core.train import fingerprint

if TYPE_CHECKING:
    from sagan_core.train.trainer import Trainer

log = logging.getLogger("sagan.train")


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
        "fingerprint": fingerprint.record(t.params, t.content_hash),
        "best": t.evals.state_dict(),  # the best in-training score so far (None: no evaluation yet)
    }


def restore(t: Trainer, ckpt: dict[str, Any]) -> None:
    """Refuses (ConfigError) a checkpoint of another architecture, naming what differs; a part that
    does not fit (hand-edited, truncated state) is a SaganError naming the file and the part."""
    saved = ModelSpec.from_dict(ckpt["spec"])
    if saved != t.spec:
        now = t.spec.to_dict()
        diff = [f"{k}={v} (params: {now[k]})" for k, v in saved.to_dict().items() if v != now[k]]
        raise ConfigError(
            f"--resume: the checkpoint was trained with {', '.join(diff)}; "
            "restore those params or train from scratch"
        )
    parts = [  # in this order: the order that made resume bit-exact
        ("generator", t.G.load_state_dict),
        ("generator_ema", t.G_ema.module.load_state_dict),
        ("ema_n_averaged", t.G_ema.n_averaged.copy_),
        ("discriminator", t.D.load_state_dict),
        ("opt_g", t.opt_g.load_state_dict),
        ("opt_d", t.opt_d.load_state_dict),
        ("rng", lambda rng: t.noise.set_state(rng["noise"])),
        ("rng", lambda rng: torch.set_rng_state(rng["cpu"])),
        ("rng", _set_cuda_rng(t)),
        ("loader", t.loader.load_state_dict),
    ]
    for key, put in parts:
        try:
            put(ckpt[key])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise SaganError(f"{t.ckpt_path}: damaged checkpoint: {key} does not fit ({reason})") from None
    t.evals.load_state_dict(ckpt.get("best"))
    t.step = int(ckpt["step"])


def _set_cuda_rng(t: Trainer):
    def put(rng: dict[str, Any]) -> None:
        if t.device.type == "cuda" and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"], t.device)

    return put


def resume(t: Trainer) -> None:
    """Load `t`'s checkpoint into it, then apply optimizer settings that the params changed."""
    ckpt = ckpt_io.load(t.ckpt_path, map_location=t.device, keys=ckpt_io.RESUME)
    restore(t, ckpt)
    changed = fingerprint.changes(ckpt.get("fingerprint"), fingerprint.record(t.params, t.content_hash))
    if changed and "fingerprint" in ckpt:
        log.warning(
            "--resume: what shaped the checkpoint changed (%s); training goes on, no longer bit-exact",
            "; ".join(changed),
        )
    apply_changed_optim(t)


def apply_changed_optim(t: Trainer) -> None:
    """`--resume --set train.lr_g=...`: the loaded optimizer state carries the old settings, while the
    new checkpoint records the params; use the params (the user asked), and say it breaks bit-exactness."""
    cfg = t.cfg
    changes = [("train.lr_g", t.opt_g, "lr", cfg.lr_g), ("train.lr_d", t.opt_d, "lr", cfg.lr_d)]
    betas = (float(cfg.beta1), float(cfg.beta2))
    changes += [(f"train.beta{i + 1}", opt, i, betas[i]) for opt in (t.opt_g, t.opt_d) for i in (0, 1)]
    said = set()
    for key, opt, slot, new in changes:
        for group in opt.param_groups:
            old = group[slot] if slot == "lr" else group["betas"][slot]
            if old == new:
                continue
            if slot == "lr":
                group["lr"] = new
            else:
                group["betas"] = tuple(new if i == slot else b for i, b in enumerate(group["betas"]))
            if key not in said:
                said.add(key)
                log.warning("%s: %s -> %s (applied on resume; no longer bit-exact)", key, old, new)


def nonfinite(t: Trainer) -> list[str]:
    """The parts of the training state holding inf/NaN: the weights and the optimizers' moments (a
    non-finite exp_avg_sq leaves the weights finite for a while, but every later update is garbage,
    and a checkpoint holding it cannot be resumed). One device sync per tensor list."""
    bad = []
    with torch.no_grad():
        for name, net, opt in (("generator", t.G, t.opt_g), ("discriminator", t.D, t.opt_d)):
            if not _all_finite(list(net.parameters())):
                bad.append(f"{name} weights")
            # "step" is a counter (on the CPU even for CUDA parameters), not a learned value.
            moments = [
                v for s in opt.state.values() for k, v in s.items() if k != "step" and torch.is_tensor(v)
            ]
            if not _all_finite(moments):
                bad.append(f"{name} optimizer state")
    return bad


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    return not tensors or bool(torch.stack([x.isfinite().all() for x in tensors]).all())
