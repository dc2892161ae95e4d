"""SAGAN training: hinge loss, TTUR, EMA generator, NaN guard, DDP, optional DiffAugment and LeCam.
A step is `n_dis` D updates and one G update; every random draw comes from state the checkpoint
keeps, so `--resume` continues bit for bit.

Longer than 300 lines: the loop and what it does on its steps read top to bottom in one place.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from sagan_core.atomic import copy_atomic
from sagan_core.config import Params
from sagan_core.data.dataset import BatchLoader, open_prepared
from sagan_core.device import resolve_device
from sagan_core.errors import ConfigError, SaganError
from sagan_core.model import checkpoint as ckpt_io
from sagan_core.model import visualize as vis
from sagan_core.model.networks import attention_blocks, build_models, model_spec
from sagan_core.train import diffaug, distributed, fingerprint, precision, resume, standing_stats
from sagan_core.train.losses import d_hinge, g_hinge, lecam, lecam_anchors
from sagan_core.train.periodic_eval import PeriodicEval
from sagan_core.train.progress import Callback, ConsoleProgress, MetricsCSV, StepMeter
from sagan_core.train.state import TrainState

log = logging.getLogger("sagan.train")


class TrainingDiverged(SaganError):
    pass


class Trainer:
    def __init__(self, params: Params, callbacks: Iterable[Callback] = (), progress: bool = True):
        self.params, self.cfg, self.callbacks, self.progress = params, params.train, list(callbacks), progress
        self.hooks: list[Callback] = self.callbacks  # during fit: + the metrics CSV and console progress
        cfg = self.cfg
        probe = resolve_device(cfg.device, "train.device")  # decides the process-group backend
        self.dist = distributed.init_distributed(probe.type, cfg.dist_timeout_s)
        self.device = resolve_device(cfg.device, "train.device", self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.plan = precision.plan(cfg, self.device)

        data, want = open_prepared(params.data.prepared_dir), (params.data.resolution, params.data.channels)
        if (data.manifest["resolution"], data.manifest["channels"]) != want:
            raise ConfigError(
                f"data.resolution/channels: params say {want[0]}px x {want[1]}, "
                f"the prepared data is {data.manifest['resolution']}px x {data.manifest['channels']} "
                "(run `sagan prepare` again)"
            )
        self.class_names = list(data.manifest.get("class_names", []))
        self.content_hash = data.manifest["content_hash"]  # part of the checkpoint's fingerprint
        distributed.check_same_data(self.content_hash, self.device)  # every node trains on rank 0's data
        self.spec = spec = model_spec(params, data.num_classes)
        rank, world = self.dist.rank, self.dist.world_size  # rank r of w reads every w-th image
        loader = BatchLoader(data, cfg.batch_size, cfg.seed, params.data.hflip, self.device, rank, world)

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        G, D = build_models(spec)
        for net in (G, D):
            net.to(self.device, memory_format=self.plan.memory_format)
        # EMA of parameters only: averaged u/v would un-normalise; buffers are copied from G instead
        G_ema = AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=False).eval()
        betas = (float(cfg.beta1), float(cfg.beta2))  # torch 2.14 rejects an int/float mix
        opt_g = precision.adam(G.parameters(), cfg.lr_g, betas, self.device)
        opt_d = precision.adam(D.parameters(), cfg.lr_d, betas, self.device)
        noise_seed = cfg.seed * 7919 + 104729 * (self.dist.rank + 1)
        noise = torch.Generator(device=self.device).manual_seed(noise_seed)
        self.state = TrainState(spec, G, G_ema, D, opt_g, opt_d, noise, loader, self.device)
        if cfg.diffaug:  # its own generator: with DiffAugment off every other draw is unchanged
            self.state.augment = torch.Generator(device=self.device).manual_seed(noise_seed + 15485863)
        self.ckpt_path = cfg.checkpoint
        self.last_good_step: int | None = None
        self.evals = PeriodicEval(params, self.device, enabled=self.dist.is_main)
        self._stats_step: int | None = None  # the step G_ema's own BatchNorm statistics are from

    def checkpoint(self) -> dict[str, Any]:
        return self.state.state_dict() | {
            "class_names": self.class_names,
            "params": self.params.model_dump(),
            "fingerprint": fingerprint.record(self.params, self.content_hash),
            "best": self.evals.best,  # None: no evaluation yet
        }

    def save_checkpoint(self) -> None:
        s = self.state
        self._check_finite()
        distributed.broadcast_buffers(s.G, s.D)
        if self.dist.is_main:
            self._own_ema_stats()
            ckpt_io.save_atomic(ckpt := self.checkpoint(), self.ckpt_path)
            ckpt_io.keep_step(ckpt, self.cfg.step_checkpoint(s.step), self.cfg.keep_checkpoints)
            self._emit("on_checkpoint", s.step, self.ckpt_path)
        self.last_good_step = s.step

    def _check_finite(self, losses: dict[str, float] | None = None) -> None:
        bad = [k for k, v in (losses or {}).items() if not math.isfinite(v)]
        bad = bad or self.state.nonfinite()  # weights and optimizer moments
        if distributed.any_rank(bool(bad), self.device):
            kept = "no checkpoint had been written yet"
            if self.last_good_step is not None:
                kept = f"the last good checkpoint (step {self.last_good_step}) at {self.ckpt_path} was kept"
            what = ", ".join(bad) or "another rank's values"
            raise TrainingDiverged(f"training diverged at step {self.state.step}: {what} not finite; {kept}")

    def _sample(self, fixed) -> None:
        """The EMA generator's grid on fixed noise, preview and attention figure, also as `latest`."""
        z, y, nrow = fixed
        z, y = z.to(self.device), None if y is None else y.to(self.device)
        self._own_ema_stats()
        out, g, step = Path(self.cfg.samples_dir), self.state.G_ema.module, self.state.step
        size = max(64, self.cfg.batch_size)  # a chunk at a time: every class can be many images
        zs = z.split(size)
        ys = [None] * len(zs) if y is None else y.split(size)
        with torch.no_grad(), self.plan.autocast(self.device):
            images = torch.cat([g(zc, yc).float() for zc, yc in zip(zs, ys)])
        grid = out / f"step_{step:06d}.png"
        if y is None:
            vis.save_grid(images, grid, nrow)
            pages = [grid]
        else:
            pages = vis.save_class_grids(images, y, nrow, grid, self.class_names)
        for k, page in enumerate(pages, start=1):  # the MLflow series: samples, samples_p2, ...
            vis.page_path(self.cfg.latest_samples, k).write_bytes(page.read_bytes())
            self._emit("on_image", step, "samples" if k == 1 else f"samples_p{k}", page)
        vis.page_path(self.cfg.latest_samples, len(pages) + 1).unlink(missing_ok=True)  # fewer classes now
        preview = vis.save_preview(
            images, y, nrow, self.cfg.latest_samples.with_name("preview.png"), self.class_names
        )
        self._emit("on_image", step, "preview", preview)  # the model card's picture
        fig = vis.attention_figure(g, z, y, out / f"attention_step_{step:06d}.png", names=self.class_names)
        if fig is not None:
            copy_atomic(fig, self.cfg.latest_attention)
            self._emit("on_image", step, "attention", Path(fig))

    def _own_ema_stats(self) -> None:
        step = self.state.step
        if self._stats_step != step:  # its own seeded noise: training's RNG is untouched
            seed, n = self.cfg.seed * 1_000_003 + step, self.cfg.standing_stats
            standing_stats.accumulate(self.state.G_ema.module, n, self.cfg.batch_size, seed, self.device)
            self._stats_step = step

    def _evaluate(self) -> dict[str, float]:
        step = self.state.step
        if self.evals.scorer is None or not self.evals.due(step, step == self.cfg.steps):
            return {}
        self._own_ema_stats()
        scores = self.evals.run(self.state.G_ema.module, step, self.checkpoint)
        if self.evals.improved:
            self._emit("on_best", step, self.evals.path, scores)
        return scores

    def _prepare_modules(self):
        """(G, D, D in G's step), DDP-wrapped and/or compiled. G's step uses D unwrapped: frozen
        there, DDP would wait for gradients that never come."""
        G, D = self.state.G, self.state.D
        g_run, d_run, d_frozen = G, D, D
        if self.dist.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            g_run, d_run = DDP(G, device_ids=ids), DDP(D, device_ids=ids)
        if self.plan.compile:
            mode = self.plan.compile_mode
            g_run, d_run, d_frozen = (torch.compile(m, mode=mode) for m in (g_run, d_run, D))
        return g_run, d_run, d_frozen

    def _update_ema(self) -> None:
        s = self.state
        if s.step <= self.cfg.ema_start:
            s.G_ema.n_averaged.zero_()  # AveragedModel copies on its first update
        s.G_ema.update_parameters(s.G)
        with torch.no_grad():
            for b_ema, b in zip(s.G_ema.module.buffers(), s.G.buffers()):
                b_ema.copy_(b)

    def _fake_inputs(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.randn(n, self.spec.z_dim, generator=self.state.noise, device=self.device)
        if not self.spec.num_classes:
            return z, None
        return z, torch.randint(self.spec.num_classes, (n,), generator=self.state.noise, device=self.device)

    def train_step(self, g_run, d_run, d_frozen) -> torch.Tensor:
        """[loss_d, loss_g, D(x), D(G(z))] on the device."""
        cfg, b, mf, s = self.cfg, self.cfg.batch_size, self.plan.memory_format, self.state
        if self.plan.compile and self.plan.compile_mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # CUDA graphs reuse their output memory
        s.D.requires_grad_(True)
        for _ in range(cfg.n_dis):
            x, y = next(s.loader)
            z, y_fake = self._fake_inputs(b)
            with torch.no_grad(), self.plan.autocast(self.device):
                fake = g_run(z, y_fake)
            # real and fake in one D pass: one power iteration per D step
            inp = torch.cat([x.to(fake.dtype), fake])
            inp = diffaug.augment(inp, cfg.diffaug, s.augment).contiguous(memory_format=mf)
            labels = None if y_fake is None else torch.cat([y, y_fake])
            with self.plan.autocast(self.device):
                logits = d_run(inp, labels)
            d_real, d_fake = logits[:b], logits[b:]
            loss_d = d_hinge(d_real, d_fake)
            if cfg.lecam_weight:
                s.lecam = lecam_anchors(s.lecam, d_real, d_fake, cfg.lecam_decay)
                loss_d = loss_d + cfg.lecam_weight * lecam(d_real, d_fake, s.lecam)
            s.opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            s.opt_d.step()
        s.D.requires_grad_(False)  # G's backward needs no D gradients
        z, y_fake = self._fake_inputs(b)
        with self.plan.autocast(self.device):
            fake = diffaug.augment(g_run(z, y_fake), cfg.diffaug, s.augment).contiguous(memory_format=mf)
            loss_g = g_hinge(d_frozen(fake, y_fake))
        s.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        s.opt_g.step()
        with torch.no_grad():  # numbers for the log: no graph built for them
            return torch.stack([loss_d, loss_g, d_real.float().mean(), d_fake.float().mean()])

    def fit(self, resume: bool = False) -> dict[str, Any]:
        cfg, main, s = self.cfg, self.dist.is_main, self.state
        if resume:
            distributed.share_newest(self.ckpt_path, ckpt_io.step_of, self.device)  # no shared disk
            self._resume()
        if s.step >= cfg.steps:
            log.info("checkpoint is at step %d >= train.steps=%d: nothing to train", s.step, cfg.steps)
            return self._summary(0.0)
        g_run, d_run, d_frozen = self._prepare_modules()
        s.G.train()
        s.D.train()
        gammas = {f"gamma_g{i}": blk.gamma for i, blk in enumerate(attention_blocks(s.G))}
        gammas |= {f"gamma_d{i}": blk.gamma for i, blk in enumerate(attention_blocks(s.D))}
        fixed = vis.fixed_inputs(self.spec.z_dim, self.spec.num_classes)
        fields = ["step", "loss_d", "loss_g", "d_real", "d_fake", *gammas, "lr_g", "lr_d", "img_per_s"]
        fields += ["kid", "kid_std", "fid"] if cfg.eval_every else []
        csv_log = MetricsCSV(cfg.metrics_file, fields) if main else None
        console = ConsoleProgress(cfg.steps) if main and self.progress else None
        self.hooks = [cb for cb in (csv_log, self.evals, *self.callbacks, console) if cb is not None]
        meter = StepMeter(self.device, s.step, images_per_step=cfg.batch_size * self.dist.world_size)
        t0, metrics = time.perf_counter(), {}
        try:
            self._emit("on_start", self._start_info())
            if main and s.step == 0:  # the untrained G too: image series start at step 0
                self._sample(fixed)
            while s.step < cfg.steps:
                meter.add(self.train_step(g_run, d_run, d_frozen))
                s.step += 1
                self._update_ema()
                self._emit("on_step_end", s.step, s)
                last = s.step == cfg.steps
                if s.step % cfg.log_every == 0 or last or self.evals.due(s.step, last):
                    metrics = self._metrics(*meter.read(s.step), gammas)  # every rank: NaN guard
                    if main:
                        scores = self._evaluate()  # KID/FID on evaluation steps
                        if scores:
                            meter.restart_clock()  # img_per_s counts training, not evaluation
                        metrics |= scores
                        self._emit("on_metrics", s.step, metrics)
                if main and (s.step % cfg.sample_every == 0 or last):
                    self._sample(fixed)
                if s.step % cfg.checkpoint_every == 0 or last:
                    self.save_checkpoint()
        finally:
            for recorder in filter(None, (console, csv_log)):
                recorder.close()
        result = self._summary(time.perf_counter() - t0, metrics)
        if main:
            self._emit("on_end", result)
        return result

    def _emit(self, event: str, *args: Any) -> None:
        for cb in self.hooks:
            getattr(cb, event)(*args)

    def _resume(self) -> None:
        now = fingerprint.record(self.params, self.content_hash)
        ckpt = resume.load(self.ckpt_path, self.spec, self.device, now)
        self.state.load_state_dict(ckpt, self.ckpt_path)
        self.evals.load_state_dict(ckpt.get("best"))
        self.state.apply_optimizer_params(self.cfg)  # changed learning rates / betas, each logged
        self.last_good_step = self.state.step
        log.info("resumed from %s at step %d", self.ckpt_path, self.state.step)

    def _metrics(self, losses: dict[str, float], rate: float, gammas: dict[str, Any]) -> dict[str, float]:
        self._check_finite(losses)
        lrs = {"lr_g": self.state.opt_g.param_groups[0]["lr"], "lr_d": self.state.opt_d.param_groups[0]["lr"]}
        return losses | {k: v.item() for k, v in gammas.items()} | lrs | {"img_per_s": rate}

    def _start_info(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "device": str(self.device),
            "world_size": self.dist.world_size,
            **dataclasses.asdict(self.plan),  # bf16, channels_last, compile, compile_mode
            "start_step": self.state.step,
            "num_images": len(self.state.loader.data),
        }

    def _summary(self, seconds: float, metrics: dict[str, float] | None = None) -> dict[str, Any]:
        return {
            "step": self.state.step,
            "checkpoint": str(self.ckpt_path),
            "seconds": seconds,
            "eval_seconds": self.evals.seconds,  # of `seconds`, in-training evaluation
            "best": self.evals.best,  # {"metric", "value", "step"} of models/best.pt, or None
            "samples": str(self.cfg.latest_samples),
            "attention": str(self.cfg.latest_attention),
            "metrics": metrics or {},
            "spec": self.spec.to_dict(),
        }


def train(params: Params, resume: bool = False, callbacks=(), progress: bool = True) -> dict[str, Any]:
    try:
        with distributed.lost_peers():  # a node or rank gone: one line, not a backend traceback
            return Trainer(params, callbacks, progress).fit(resume)
    finally:
        distributed.cleanup()
