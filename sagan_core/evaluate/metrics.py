"""FID, Inception Score and KID as math on Inception features: statistics and distances only.

- Mean and covariance are accumulated in float64 as feature batches arrive (`StatsAccumulator`),
  so memory is bounded by the batch size. Only KID keeps one float32 feature vector per sample (it
  draws random subsets of them).
- The Fréchet distance equals pytorch-fid's `calculate_frechet_distance`: computed exactly from
  two symmetric eigendecompositions when both covariances are well-conditioned (the 10k/50k
  protocols); with fewer samples than feature dimensions (singular covariances, the CPU demo)
  exactly from the samples' n1 x n2 cross-Gram matrix when both sides kept their features, else
  by pytorch-fid's own function (scipy `sqrtm`).
- The Inception Score is streamed over contiguous splits (the original protocol); KID is the
  unbiased polynomial-kernel MMD over random subsets.

Where features come from (images, files, generators) is `sagan_core.fid` and `sagan_core.evaluate`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pytorch_fid.fid_score import calculate_frechet_distance
from scipy.linalg import LinAlgWarning
from scipy.special import xlogy

from sagan_core.errors import ConfigError, SaganError

log = logging.getLogger("sagan.metrics")

IS_SPLITS = 10


@dataclass
class Stats:
    """Feature statistics: pytorch-fid's mean and covariance, and what our files add to them."""

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


# A covariance whose smallest eigenvalue is below this fraction of its largest is treated as
# singular (it is whenever there are fewer samples than feature dimensions).
WELL_CONDITIONED_RCOND = 1e-10


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, allow_singular: bool = False) -> float | None:
    """Tr((S1 S2)^1/2) exactly; None when a covariance is (numerically) singular, unless allowed.

    Why not scipy's `sqrtm` (what pytorch-fid uses): a general, non-symmetric matrix square root of
    the 2048x2048 product costs ~20 s on 2 CPU cores, a fixed cost of every evaluation. Here, with
    R_i = S_i^1/2 = V_i diag(sqrt w_i) V_i^T, S1 S2 is similar to (R2 R1)^T (R2 R1), so the trace of
    its square root is the sum of the singular values of R2 R1, i.e. of
    diag(sqrt w2) (V2^T V1) diag(sqrt w1): two symmetric eigendecompositions, one matmul, one SVD,
    all float64. Singular values (unlike square roots of small eigenvalues) carry only absolute
    errors of ~eps * largest, so this is at least as accurate as sqrtm; agreement with pytorch-fid
    is tested.

    Features with exactly zero variance (ReLU units dead on every image: zero rows and columns of
    S_i) are dropped from that covariance first; the selection is an isometry, so this is exact.
    If what remains is singular (fewer samples than feature dimensions), the trace is
    ill-conditioned for any method: the caller falls back to pytorch-fid's own computation so that
    the numbers stay identical to pytorch-fid's. `allow_singular` computes it anyway (eigenvalues
    that rounding made negative are clipped to 0: both matrices are PSD), for when that fails.
    """
    live1, live2 = s1.any(axis=0), s2.any(axis=0)
    if not live1.any() or not live2.any():
        return 0.0 if allow_singular else None  # a zero covariance: S1 S2 = 0
    w1, v1 = np.linalg.eigh(s1[np.ix_(live1, live1)])
    w2, v2 = np.linalg.eigh(s2[np.ix_(live2, live2)])
    if w1[0] <= WELL_CONDITIONED_RCOND * w1[-1] or w2[0] <= WELL_CONDITIONED_RCOND * w2[-1]:
        if not allow_singular:
            return None
        w1, w2 = np.clip(w1, 0.0, None), np.clip(w2, 0.0, None)
    cross = v2[live1[live2]].T @ v1[live2[live1]]  # V2^T V1 restricted to features live in both
    b = np.sqrt(w2)[:, None] * cross * np.sqrt(w1)[None, :]
    return float(np.linalg.svd(b, compute_uv=False).sum())


def trace_sqrt_product_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
    """Tr((S1 S2)^1/2) of the sample covariances of two feature sets, exactly, in sample space.

    With X_i the centred features scaled by 1/sqrt(n_i - 1), S_i = X_i^T X_i. The nonzero
    eigenvalues of S1 S2 = X1^T (X1 X2^T X2) are those of X1 X2^T X2 X1^T = M M^T with
    M = X1 X2^T (n1 x n2), so the trace of the square root is the sum of M's singular values
    (its nuclear norm). For fewer samples than dimensions this replaces scipy's `sqrtm` of the
    singular d x d product (~25 s at d = 2048 on 2 CPU cores) by one n1 x d x n2 product and an
    n1 x n2 SVD (~0.03 s at 250 x 250), and it is better conditioned: singular values move by at
    most the perturbation's norm, while a square root of a singular matrix amplifies rounding.
    pytorch-fid's `sqrtm` value agrees to 1e-7-5e-7 relative at 100-300 samples (tests/test_fid.py: 1e-5).
    """
    x1, x2 = (np.asarray(f, dtype=np.float64) for f in (f1, f2))
    x1 = (x1 - x1.mean(axis=0)) / np.sqrt(len(x1) - 1)
    x2 = (x2 - x2.mean(axis=0)) / np.sqrt(len(x2) - 1)
    return float(np.linalg.svd(x1 @ x2.T, compute_uv=False).sum())


def _all_features(s: Stats) -> np.ndarray | None:
    """The features behind `s`'s mean and covariance, when it kept all of them."""
    if s.features is None or (s.n is not None and s.n != len(s.features)):
        return None
    return s.features


class _SqrtmFailed(ValueError):
    """pytorch-fid refused its sqrtm result (large imaginary part)."""


_CALM_SAID: set[tuple[int, int]] = set()  # the rank-deficiency line: once per sample count and size


def _few_samples(n: int, dims: int) -> None:
    """Say once, calmly, what an FID from fewer samples than feature dimensions is (and is not).

    Below the feature dimension a covariance is rank-deficient for sure: scipy's sqrtm then warns of
    a singular product and may fail, and pytorch-fid prints a notice. Those messages are expected
    here and say nothing a user can act on, so they go to the debug log; this line replaces them.
    """
    if (n, dims) not in _CALM_SAID:
        _CALM_SAID.add((n, dims))
        log.info(
            "FID at %d samples in %d dims: the covariance is rank-deficient, so this FID is a rough "
            "trend, not comparable with published FIDs (use eval.num_samples >= %d)",
            n,
            dims,
            dims,
        )


def frechet_distance(a: Stats, b: Stats) -> float:
    """pytorch-fid's Fréchet distance (see `trace_sqrt_product`), with clear errors and logs."""
    return frechet_with_method(a, b)[0]


def frechet_with_method(a: Stats, b: Stats) -> tuple[float, str]:
    """(Fréchet distance, how its trace was computed).

    "eigh-svd": well-conditioned covariances, exact and fast. "gram-svd": fewer samples than
    dimensions and both sides' features at hand (in-training scoring, `sagan evaluate` against the
    prepared reference, `sagan fid` on small folders): exact, in sample space. "sqrtm": singular
    covariances without features (a pytorch-fid .npz), pytorch-fid's own computation (its digits). "eigh-svd-singular": pytorch-fid's sqrtm failed
    (it refuses results whose imaginary part exceeds 1e-3, which happens with few samples of large
    features); the exact PSD formula then gives the value pytorch-fid cannot, and a warning says so.
    """
    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise ConfigError(
            f"statistics have different dimensions ({a.mu.shape[0]} vs {b.mu.shape[0]} features); "
            "use the same --dims for both"
        )
    for s in (a, b):
        if not (np.isfinite(s.mu).all() and np.isfinite(s.sigma).all()):
            raise SaganError("statistics contain NaN/Inf values")
    mu1, mu2 = np.atleast_1d(a.mu).astype(np.float64), np.atleast_1d(b.mu).astype(np.float64)
    s1, s2 = np.atleast_2d(a.sigma).astype(np.float64), np.atleast_2d(b.sigma).astype(np.float64)
    diff = mu1 - mu2

    def from_trace(tr_covmean: float) -> float:
        return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)

    # rank(sigma) <= n - 1: with n <= dims samples a covariance is singular for sure, so the
    # eigendecompositions of the exact path would only find that out (seconds at 2048 dims).
    doomed = any(s.num is not None and s.num <= len(mu1) for s in (a, b))
    tr_covmean = None if doomed else trace_sqrt_product(s1, s2)
    if doomed:
        _few_samples(min(s.num for s in (a, b) if s.num is not None), len(mu1))
    f1, f2 = _all_features(a), _all_features(b)
    if tr_covmean is not None:
        value, method = from_trace(tr_covmean), "eigh-svd"
    elif doomed and f1 is not None and f2 is not None:
        value, method = from_trace(trace_sqrt_product_from_features(f1, f2)), "gram-svd"
    else:
        # expected below the feature dimension (said once, calmly, above); a surprise otherwise
        note = log.debug if doomed else log.warning
        if not doomed:
            log.info("a covariance is singular: FID via scipy sqrtm")
        try:
            value, method = _pytorch_fid_frechet(mu1, s1, mu2, s2, note), "sqrtm"
        except _SqrtmFailed as e:
            note(
                "pytorch-fid's sqrtm failed on these statistics (%s; pytorch-fid itself would stop here): "
                "FID computed with the exact formula for singular covariances instead. Use more samples "
                "than feature dimensions for FIDs comparable with other tools.",
                e,
            )
            value = from_trace(trace_sqrt_product(s1, s2, allow_singular=True))
            method = "eigh-svd-singular"
    if not np.isfinite(value):
        raise SaganError("FID is not finite (too few samples for the feature size?)")
    return value, method


def _pytorch_fid_frechet(mu1, s1, mu2, s2, note=log.warning) -> float:
    """pytorch-fid's own function, its asserts and prints turned into clear errors and logs."""
    out = io.StringIO()
    try:
        # pytorch-fid prints its singular-product notice; scipy warns that the product is singular,
        # which is expected below the feature dimension (and said once, in the log, by the caller).
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore", LinAlgWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # scipy 1.16+: sqrtm(disp=) in pytorch-fid
            value = float(calculate_frechet_distance(mu1, s1, mu2, s2))
    except ValueError as e:  # "Imaginary component ..." from a badly conditioned product
        raise _SqrtmFailed(str(e)) from None
    if out.getvalue().strip():
        note("%s", out.getvalue().strip())
    return value


class ISAccumulator:
    """Inception Score over `splits` contiguous splits (the original protocol), streamed.

    Per split, mean KL(p(y|x) || p(y)) = mean_x sum_y p log p - sum_y p_bar log p_bar, so each
    split needs only its running sum of p and of sum_y p log p.
    """

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


def inception_score(logits: np.ndarray | torch.Tensor, splits: int = IS_SPLITS) -> tuple[float, float]:
    acc = ISAccumulator(len(logits), splits)
    acc.add(torch.as_tensor(np.asarray(logits)))
    return acc.result()


def kid(
    f1: np.ndarray, f2: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 with k(x, y) = (x.y / d + 1)^3, mean and std over
    random subsets of min(subset_size, n1, n2) samples each (Bińkowski et al. 2018)."""
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ConfigError(f"KID needs at least 2 samples on each side, got {len(f1)} and {len(f2)}")
    d = f1.shape[1]
    rng = np.random.default_rng(seed)
    mmds = np.empty(subsets)
    # Small sets: the three kernel matrices once, then subsets are index lookups (m x m gathers
    # instead of three m x m x d products per subset). Large sets: per subset, bounded memory.
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
