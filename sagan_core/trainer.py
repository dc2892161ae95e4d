"""SAGAN training: hinge loss, TTUR, EMA generator, exact resume, NaN guard, DDP.

One code path for CPU and GPU: on CUDA the defaults turn on bf16 autocast and channels_last (and
`train.compile` adds torch.compile); on CPU the same loop runs in fp32, and tests can force bf16 or
channels_last there too.

A "step" is one generator update preceded by `n_dis` discriminator updates. Every random draw
comes from state that the checkpoint stores (the noise generator, the loader's (epoch, cursor)),
so `--resume` continues bit for bit where an uninterrupted run would be.
"""

from __future__ import annotations

import csv
import logging
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from . import checkpoint as ckpt_io
from .config import Params
from .data import BatchLoader, open_prepared
from .device import resolve_device
from .distributed import DistInfo, any_rank, broadcast_buffers, cleanup, init_distributed
from .errors import ConfigError, SaganError
from .losses import d_hinge, g_hinge
from .model import ModelSpec, attention_blocks, build_models, default_attention
from .visualize import attention_figure, fixed_inputs, save_grid

log = logging.getLogger("sagan.train")


class TrainingDiverged(SaganError):
    pass


class Callback:
    """Hooks for recorders that sagan_core must not import (MLflow lives in pipelines/)."""

    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_metrics(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_image(self, step: int, key: str, path: Path) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def on_step_end(self, step: int, trainer: Trainer) -> None: ...
    def on_end(self, summary: dict[str, Any]) -> None: ...


def model_spec(params: Params, num_classes: int) -> ModelSpec:
    m, d = params.model, params.data
    conditional = {"auto": num_classes > 1, "yes": True, "no": False}[m.conditional]
    if conditional and num_classes < 2:
        raise ConfigError(
            "model.conditional: 'yes' needs a labelled dataset (class subfolders), this one has none"
        )
    return ModelSpec(
        resolution=d.resolution,
        channels=d.channels,
        num_classes=num_classes if conditional else 0,
        z_dim=m.z_dim,
        g_ch=m.g_ch,
        d_ch=m.d_ch,
        g_attn=tuple(m.g_attn if m.g_attn is not None else default_attention(d.resolution)),
        d_attn=tuple(m.d_attn if m.d_attn is not None else default_attention(d.resolution)),
        sn_eps=m.sn_eps,
        bn_eps=m.bn_eps,
        cbn_init=m.cbn_init,
    )


class Trainer:
    def __init__(
        self, params: Params, callbacks: list[Callback] | tuple[Callback, ...] = (), progress: bool = True
    ):
        self.params, self.cfg, self.callbacks, self.progress = params, params.train, list(callbacks), progress
        cfg = self.cfg
        probe = resolve_device(cfg.device, "train.device")  # decides the process-group backend
        self.dist: DistInfo = init_distributed(probe.type)
        self.device = resolve_device(cfg.device, "train.device", self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        on_cuda = self.device.type == "cuda"
        self.use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and on_cuda)
        self.channels_last = cfg.channels_last == "yes" or (cfg.channels_last == "auto" and on_cuda)

        data = open_prepared(params.data.prepared_dir)
        if (data.manifest["resolution"], data.manifest["channels"]) != (
            params.data.resolution,
            params.data.channels,
        ):
            raise ConfigError(
                f"data.resolution/channels: params say {params.data.resolution}px x {params.data.channels}, "
                f"the prepared data is {data.manifest['resolution']}px x {data.manifest['channels']} "
                "(run `sagan prepare` again)"
            )
        self.class_names = list(data.manifest.get("class_names", []))
        self.spec = model_spec(params, data.num_classes)
        self.loader = BatchLoader(
            data,
            cfg.batch_size,
            cfg.seed,
            params.data.hflip,
            self.device,
            self.dist.rank,
            self.dist.world_size,
        )

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.G, self.D = build_models(self.spec)
        self.G.to(self.device)
        self.D.to(self.device)
        if self.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        # EMA of parameters only: averaging spectral-norm vectors would un-normalise them, so the
        # buffers (BN statistics, u/v) are copied from G after each update instead.
        self.G_ema = AveragedModel(
            self.G, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=False
        )
        self.G_ema.eval()
        betas = (float(cfg.beta1), float(cfg.beta2))  # torch 2.14 rejects an int/float mix
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        self.noise = torch.Generator(device=self.device).manual_seed(
            cfg.seed * 7919 + 104729 * (self.dist.rank + 1)
        )
        self.step = 0
        self.ckpt_path = cfg.checkpoint
        self.last_good_step: int | None = None

    # ---- checkpoint -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        rng: dict[str, Any] = {"noise": self.noise.get_state(), "cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "step": self.step,
            "spec": self.spec.to_dict(),
            "class_names": self.class_names,
            "generator": self.G.state_dict(),
            "generator_ema": self.G_ema.module.state_dict(),
            "ema_n_averaged": self.G_ema.n_averaged.detach().clone(),
            "discriminator": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": rng,
            "loader": self.loader.state_dict(),
            "params": self.params.model_dump(),
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        saved = ModelSpec.from_dict(ckpt["spec"])
        if saved != self.spec:
            diff = [
                f"{k}={v} (params: {getattr(self.spec, k)})"
                for k, v in saved.to_dict().items()
                if v != self.spec.to_dict()[k]
            ]
            raise ConfigError(
                f"--resume: the checkpoint was trained with {', '.join(diff)}; "
                "restore those params or train from scratch"
            )
        self.G.load_state_dict(ckpt["generator"])
        self.G_ema.module.load_state_dict(ckpt["generator_ema"])
        self.G_ema.n_averaged.copy_(ckpt["ema_n_averaged"])
        self.D.load_state_dict(ckpt["discriminator"])
        self.opt_g.load_state_dict(ckpt["opt_g"])
        self.opt_d.load_state_dict(ckpt["opt_d"])
        self.noise.set_state(ckpt["rng"]["noise"])
        torch.set_rng_state(ckpt["rng"]["cpu"])
        if self.device.type == "cuda" and "cuda" in ckpt["rng"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"], self.device)
        self.loader.load_state_dict(ckpt["loader"])
        self.step = int(ckpt["step"])

    def save_checkpoint(self) -> None:
        self._check_finite(weights=True)
        if self.dist.enabled:
            broadcast_buffers(self.G)
            broadcast_buffers(self.D)
        if self.dist.is_main:
            ckpt_io.save_atomic(self.state_dict(), self.ckpt_path)
            for cb in self.callbacks:
                cb.on_checkpoint(self.step, self.ckpt_path)
        self.last_good_step = self.step

    def _check_finite(self, weights: bool, losses: dict[str, float] | None = None) -> None:
        bad = [k for k, v in (losses or {}).items() if not math.isfinite(v)]
        if weights and not bad:
            with torch.no_grad():
                for name, net in (("generator", self.G), ("discriminator", self.D)):
                    if not torch.stack([p.isfinite().all() for p in net.parameters()]).all():
                        bad.append(f"{name} weights")
        if any_rank(bool(bad), self.device):
            kept = (
                f"the last good checkpoint (step {self.last_good_step}) at {self.ckpt_path} was kept"
                if self.last_good_step is not None
                else "no checkpoint had been written yet"
            )
            what = ", ".join(bad) or "another rank's values"
            raise TrainingDiverged(f"training diverged at step {self.step}: {what} not finite; {kept}")

    # ---- the loop ---------------------------------------------------------------------------
    def _sample(self, fixed) -> None:
        z, y, nrow = fixed
        out = Path(self.cfg.samples_dir)
        g = self.G_ema.module
        with torch.no_grad(), self._autocast():
            images = g(z.to(self.device), None if y is None else y.to(self.device))
        grid = out / f"step_{self.step:06d}.png"
        save_grid(images, grid, nrow)
        save_grid(images, out / "latest.png", nrow)
        for cb in self.callbacks:
            cb.on_image(self.step, "samples", grid)
        fig = attention_figure(
            g,
            z.to(self.device),
            None if y is None else y.to(self.device),
            out / f"attention_step_{self.step:06d}.png",
        )
        if fig is not None:
            save_copy = out / "attention.png"
            save_copy.write_bytes(Path(fig).read_bytes())
            for cb in self.callbacks:
                cb.on_image(self.step, "attention", Path(fig))

    def _autocast(self):
        if not self.use_bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _prepare_modules(self):
        """DDP wrappers and torch.compile; the plain modules stay the ones that are saved."""
        g_run, d_run, d_for_g = self.G, self.D, self.D
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            g_run = DDP(self.G, device_ids=ids)
            d_run = DDP(self.D, device_ids=ids)
        if self.cfg.compile:
            g_run, d_run, d_for_g = torch.compile(g_run), torch.compile(d_run), torch.compile(self.D)
        return g_run, d_run, d_for_g

    def _update_ema(self) -> None:
        if self.step <= self.cfg.ema_start:
            self.G_ema.n_averaged.zero_()  # AveragedModel copies on its first update
        self.G_ema.update_parameters(self.G)
        with torch.no_grad():
            for b_ema, b in zip(self.G_ema.module.buffers(), self.G.buffers()):
                b_ema.copy_(b)

    def _csv(self):
        path = Path(self.cfg.metrics_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if self.step > 0 and path.exists():
            with open(path, newline="") as f:
                kept = [r for r in csv.DictReader(f) if int(r["step"]) <= self.step]
        f = open(path, "w", newline="")  # noqa: SIM115 - kept open for the whole run
        return f, kept

    def _fake_labels(self, n: int) -> torch.Tensor | None:
        if not self.spec.num_classes:
            return None
        return torch.randint(self.spec.num_classes, (n,), generator=self.noise, device=self.device)

    def _noise(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.spec.z_dim, generator=self.noise, device=self.device)

    def train_step(self, g_run, d_run, d_for_g) -> torch.Tensor:
        """n_dis D updates then one G update; returns [loss_d, loss_g, D(x), D(G(z))] (on device)."""
        cfg, b = self.cfg, self.cfg.batch_size
        mf = torch.channels_last if self.channels_last else torch.contiguous_format
        for p in self.D.parameters():
            p.requires_grad_(True)
        for _ in range(cfg.n_dis):
            x, y = next(self.loader)
            z, y_fake = self._noise(b), self._fake_labels(b)
            with torch.no_grad(), self._autocast():
                fake = g_run(z, y_fake)
            # Real and fake in one D pass: one spectral-norm power iteration per D step, one kernel launch.
            inp = torch.cat([x.to(fake.dtype), fake]).contiguous(memory_format=mf)
            labels = None if y_fake is None else torch.cat([y, y_fake])
            with self._autocast():
                logits = d_run(inp, labels)
            d_real, d_fake = logits[:b], logits[b:]
            loss_d = d_hinge(d_real, d_fake)
            self.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            self.opt_d.step()
        for p in self.D.parameters():  # G's backward needs no D gradients
            p.requires_grad_(False)
        z, y_fake = self._noise(b), self._fake_labels(b)
        with self._autocast():
            fake = g_run(z, y_fake).contiguous(memory_format=mf)
            loss_g = g_hinge(d_for_g(fake, y_fake))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return torch.stack(
            [loss_d.detach(), loss_g.detach(), d_real.detach().float().mean(), d_fake.detach().float().mean()]
        )

    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg, main = self.cfg, self.dist.is_main
        if resume:
            if not self.ckpt_path.exists():
                raise ConfigError(
                    f"--resume: no checkpoint at {self.ckpt_path} (train without --resume first)"
                )
            self.load_state_dict(ckpt_io.load(self.ckpt_path, map_location=self.device))
            self.last_good_step = self.step
            log.info("resumed from %s at step %d", self.ckpt_path, self.step)
        if self.step >= cfg.steps:
            log.info("checkpoint is at step %d >= train.steps=%d: nothing to train", self.step, cfg.steps)
            return self._summary(0.0)
        g_run, d_run, d_for_g = self._prepare_modules()
        self.G.train()
        self.D.train()
        gammas = {f"gamma_g{i}": blk.gamma for i, blk in enumerate(attention_blocks(self.G))}
        gammas |= {f"gamma_d{i}": blk.gamma for i, blk in enumerate(attention_blocks(self.D))}
        fixed = fixed_inputs(self.spec.z_dim, self.spec.num_classes)
        info = {
            "spec": self.spec.to_dict(),
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "bf16": self.use_bf16,
            "channels_last": self.channels_last,
            "compile": cfg.compile,
            "start_step": self.step,
            "num_images": len(self.loader.data),
        }
        for cb in self.callbacks:
            cb.on_start(info)
        csv_file, writer = None, None
        if main:
            csv_file, kept = self._csv()
            fields = ["step", "loss_d", "loss_g", "d_real", "d_fake", *gammas, "lr_g", "lr_d", "img_per_s"]
            writer = csv.DictWriter(csv_file, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        interactive = self.progress and main and sys.stderr.isatty()
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not interactive,
            dynamic_ncols=True,
        )
        acc, count = torch.zeros(4, device=self.device), 0
        t_last, step_last, t0, metrics = time.perf_counter(), self.step, time.perf_counter(), {}
        try:
            while self.step < cfg.steps:
                acc += self.train_step(g_run, d_run, d_for_g)
                count += 1
                self.step += 1
                self._update_ema()
                bar.update(1)
                for cb in self.callbacks:
                    cb.on_step_end(self.step, self)
                last = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or last:
                    vals = (acc / count).tolist()  # the one host sync per logging interval
                    now = time.perf_counter()
                    rate = (self.step - step_last) * cfg.batch_size * self.dist.world_size / (now - t_last)
                    metrics = dict(zip(["loss_d", "loss_g", "d_real", "d_fake"], vals))
                    self._check_finite(weights=True, losses=metrics)
                    metrics |= {k: v.item() for k, v in gammas.items()}
                    metrics |= {
                        "lr_g": self.opt_g.param_groups[0]["lr"],
                        "lr_d": self.opt_d.param_groups[0]["lr"],
                        "img_per_s": rate,
                    }
                    acc.zero_()
                    count, t_last, step_last = 0, now, self.step
                    if main:
                        writer.writerow({"step": self.step, **{k: f"{v:.6g}" for k, v in metrics.items()}})
                        csv_file.flush()
                        for cb in self.callbacks:
                            cb.on_metrics(self.step, metrics)
                        g_txt = " ".join(
                            f"{k[6:]}={v:.3f}" for k, v in metrics.items() if k.startswith("gamma")
                        )
                        bar.set_postfix_str(
                            f"D={metrics['loss_d']:.3f} G={metrics['loss_g']:.3f} {rate:.0f} img/s γ {g_txt}",
                            refresh=False,
                        )
                        if not interactive and self.progress:
                            log.info(
                                "step %d/%d  loss_d %.4f  loss_g %.4f  %.0f img/s  γ %s",
                                self.step,
                                cfg.steps,
                                metrics["loss_d"],
                                metrics["loss_g"],
                                rate,
                                g_txt,
                            )
                if main and (self.step % cfg.sample_every == 0 or last):
                    self._sample(fixed)
                if self.step % cfg.checkpoint_every == 0 or last:
                    self.save_checkpoint()
        finally:
            bar.close()
            if csv_file:
                csv_file.close()
        summary = self._summary(time.perf_counter() - t0, metrics)
        if main:
            for cb in self.callbacks:
                cb.on_end(summary)
        return summary

    def _summary(self, seconds: float, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        return {
            "step": self.step,
            "checkpoint": str(self.ckpt_path),
            "seconds": seconds,
            "samples": str(self.cfg.latest_samples),
            "attention": str(self.cfg.latest_attention),
            "metrics": metrics or {},
            "spec": self.spec.to_dict(),
        }


def train(params: Params, resume: bool = False, callbacks=(), progress: bool = True) -> dict[str, Any]:
    """Train (or resume) according to `params`; returns a summary. Cleans up DDP on the way out."""
    try:
        return Trainer(params, callbacks, progress).fit(resume)
    finally:
        cleanup()
