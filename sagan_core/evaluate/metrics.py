"""Streaming feature statistics (float64, memory bounded by the batch), Inception Score, KID."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.special import xlogy

from sagan_core.errors import ConfigError, SaganError

IS_SPLITS = 10


@dataclass
class Stats:
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None  # float32 N x dims, for KID
    protocol: dict[str, Any] | None = None
    n: int | None = None  # samples behind mu/sigma, when known

    @property
    def num(self) -> int | None:
        if self.n is not None:
            return self.n
        return None if self.features is None else len(self.features)


class StatsAccumulator:
    """Streaming mean and covariance (float64, ddof=1 like np.cov) of feature batches."""

    def __init__(self, keep_features: bool = False):
        self.n, self.shift, self.s, self.ss = 0, None, None, None
        self.keep = keep_features
        self.kept: list[np.ndarray] = []

    def add(self, feats: torch.Tensor | np.ndarray) -> None:
        f32 = np.asarray(feats, dtype=np.float32)
        if not np.isfinite(f32).all():
            raise SaganError("Inception features are not finite (NaN/Inf): check the images and weights")
        f = f32.astype(np.float64)
        if self.shift is None:  # centring on the first batch's mean avoids cancellation in ss/n - mu^2
            self.shift = f.mean(axis=0)
            self.s = np.zeros_like(self.shift)
            self.ss = np.zeros((f.shape[1], f.shape[1]))
        d = f - self.shift
        self.s += d.sum(axis=0)
        self.ss += d.T @ d
        self.n += len(f)
        if self.keep:
            self.kept.append(f32)

    def result(self) -> Stats:
        if self.n < 2:
            raise ConfigError(f"need at least 2 images for statistics, got {self.n}")
        mean_d = self.s / self.n
        sigma = (self.ss - self.n * np.outer(mean_d, mean_d)) / (self.n - 1)
        features = np.concatenate(self.kept) if self.keep else None
        return Stats(self.shift + mean_d, sigma, features, n=self.n)


class ISAccumulator:
    """Inception Score over contiguous splits (the original protocol), streamed: per split,
    mean KL = mean_x sum p log p - sum p_bar log p_bar needs only running sums."""

    def __init__(self, total: int, splits: int = IS_SPLITS):
        if total < splits:
            raise ConfigError(f"the Inception Score needs at least {splits} samples, got {total}")
        self.bounds = np.array([i * total // splits for i in range(splits + 1)])
        self.sum_p: np.ndarray | None = None
        self.sum_plogp = np.zeros(splits)
        self.count = np.zeros(splits)
        self.i = 0

    def add(self, logits: torch.Tensor) -> None:
        logp = torch.log_softmax(logits.double(), dim=1)
        p = logp.exp()
        plogp = (p * logp).sum(dim=1).numpy()
        split = np.searchsorted(self.bounds, np.arange(self.i, self.i + len(p)), side="right") - 1
        if self.sum_p is None:
            self.sum_p = np.zeros((len(self.count), p.shape[1]))
        np.add.at(self.sum_p, split, p.numpy())
        np.add.at(self.sum_plogp, split, plogp)
        np.add.at(self.count, split, 1)
        self.i += len(p)

    def result(self) -> tuple[float, float]:
        p_bar = self.sum_p / self.count[:, None]
        kl = self.sum_plogp / self.count - xlogy(p_bar, p_bar).sum(axis=1)
        scores = np.exp(kl)
        return float(scores.mean()), float(scores.std())


def kid(
    f1: np.ndarray, f2: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): unbiased MMD^2, cubic kernel, mean and std over random subsets."""
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ConfigError(f"KID needs at least 2 samples on each side, got {len(f1)} and {len(f2)}")
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    mmds = np.empty(subsets)
    # small sets: kernel matrices once, subsets are lookups; large: per subset, bounded memory
    full = max(len(f1), len(f2)) <= 3000
    if full:
        x, y = f1.astype(np.float64), f2.astype(np.float64)
        kxx_all, kyy_all, kxy_all = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    for i in range(subsets):
        a = rng.choice(len(f1), m, replace=False)
        b = rng.choice(len(f2), m, replace=False)
        if full:
            kxx, kyy, kxy = kxx_all[np.ix_(a, a)], kyy_all[np.ix_(b, b)], kxy_all[np.ix_(a, b)]
        else:
            x, y = f1[a].astype(np.float64), f2[b].astype(np.float64)
            kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        mmds[i] = within - 2 * kxy.sum() / (m * m)
    return float(mmds.mean()), float(mmds.std())
