"""KID/FID of the EMA generator every `train.eval_every` steps, `models/best.pt` when
`train.select_metric` improves; `sagan evaluate`'s protocol and reference cache, `train.eval_samples`
samples. Without Inception weights, one warning and training goes on.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from sagan_core.errors import SaganError
from sagan_core.evaluate import inception as inc
from sagan_core.evaluate.fid import features_pass
from sagan_core.evaluate.frechet import frechet_distance
from sagan_core.evaluate.metrics import Stats, kid
from sagan_core.evaluate.protocol import reference_stats, sample_uint8
from sagan_core.model import checkpoint as ckpt_io
from sagan_core.train.progress import Callback

log = logging.getLogger("sagan.train")


class Scorer:
    """KID + FID against `sagan evaluate`'s reference; Inception and reference loaded at first use."""

    def __init__(self, params, num_samples: int, device: torch.device, progress: bool = False):
        self.params, self.num_samples, self.device, self.progress = params, num_samples, device, progress
        self.net: inc.InceptionFeatures | None = None
        self.ref: Stats | None = None
        self.weights = inc.resolve_weights(params.eval.inception_weights)  # SaganError when absent
        self.weights_sha = inc.file_sha256(self.weights)

    def _load(self) -> None:
        # the reference through the plain network (`sagan evaluate` reuses it), samples the fast path
        plain = inc.load_net(self.weights, self.params.eval.dims, False, self.device)
        self.ref, _ = reference_stats(self.params, plain, self.weights_sha, self.device, self.progress)
        self.net = inc.load_net(self.weights, self.params.eval.dims, False, self.device, fast=True)
        if self.ref.features is None:
            raise SaganError(f"{self.params.eval.reference_split} holds no features: KID cannot be computed")

    def score(self, g) -> dict[str, float]:
        if self.net is None:
            self._load()
        ev, n = self.params.eval, self.num_samples
        batches = sample_uint8(g, n, ev.batch_size, ev.seed, self.device)
        gen, _, _ = features_pass(
            self.net, batches, -(-n // ev.batch_size), self.device, keep_features=True, progress=False
        )
        kid_mean, kid_std = kid(gen.features, self.ref.features, ev.kid_subsets, ev.kid_subset_size, ev.seed)
        return {"kid": kid_mean, "kid_std": kid_std, "fid": frechet_distance(gen, self.ref)}


class PeriodicEval(Callback):
    """When to evaluate and the best so far (kept in the checkpoint). A Callback for `on_start`: a
    best.pt the checkpoint knows nothing of is another run's, and goes."""

    def __init__(self, params, device: torch.device, enabled: bool = True):
        cfg = params.train
        self.every, self.metric, self.path = cfg.eval_every, cfg.select_metric, cfg.best_checkpoint
        self.best: dict[str, Any] | None = None  # {"metric", "value", "step"}
        self.scorer: Scorer | None = None
        self.seconds = 0.0  # wall time spent evaluating (benchmarks/eval_cost.py)
        self.improved = False  # whether the last evaluation wrote best.pt
        self.main = enabled
        # every rank keeps the schedule (same logging steps); only the main one scores
        if not (enabled and self.every):
            return
        try:
            self.scorer = Scorer(params, cfg.eval_samples, device)
        except SaganError as e:  # ConfigError too: a missing eval.inception_weights file
            log.warning("in-training evaluation is off (train.eval_every=%d): %s", self.every, e)

    def on_start(self, info: dict[str, Any]) -> None:
        if self.main and self.best is None and self.path.exists():
            log.info("removing %s: it scored other weights than this run's", self.path)
            self.path.unlink()

    def due(self, step: int, last: bool) -> bool:
        return bool(self.every) and (step % self.every == 0 or last)

    def run(self, g, step: int, state) -> dict[str, float]:
        """Score `g`; best.pt from `state()` when it improves (gathered only then)."""
        t0 = time.perf_counter()
        scores = self.scorer.score(g)
        value = scores[self.metric]
        self.improved = self.best is None or value < self.best["value"]
        if self.improved:
            self.best = {"metric": self.metric, "value": value, "step": step}
            ckpt_io.save_atomic(state() | {"best_metric": self.metric, "best_value": value}, self.path)
        self.seconds += time.perf_counter() - t0
        best = f"  (best {self.metric} so far: {self.path})" if self.improved else ""
        kid_mean, kid_std, fid = (scores[k] for k in ("kid", "kid_std", "fid"))
        log.info("step %d: KID %.5f ± %.5f  FID %.3f%s", step, kid_mean, kid_std, fid, best)
        return scores

    def load_state_dict(self, best: dict[str, Any] | None) -> None:
        # another metric's best is not comparable
        self.best = best if best and best.get("metric") == self.metric else None
