"""The Fréchet distance between two feature statistics (FID's formula), as pytorch-fid computes it.

||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^1/2); the trace of the square root is the only hard
part, and how it is computed depends on what the statistics allow:
- both covariances well-conditioned (more samples than dimensions: the 10k/50k protocols): exactly,
  from two symmetric eigendecompositions (`trace_sqrt_product`), equal to pytorch-fid to 1e-9;
- fewer samples than dimensions (singular covariances, the CPU demo) with the features at hand:
  exactly, in sample space (`trace_sqrt_product_from_features`);
- otherwise pytorch-fid's own function (scipy `sqrtm`), its messages turned into logs.
The statistics themselves (`Stats`, streamed accumulation) are `sagan_core.evaluate.metrics`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance
from scipy.linalg import LinAlgWarning

from sagan_core.errors import ConfigError, SaganError
from sagan_core.evaluate.metrics import Stats

log = logging.getLogger("sagan.metrics")


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
    If what remains is singular (fewer samples than feature dimensions), None: from covariances
    alone the trace is then ill-conditioned, and the caller uses the features
    (`trace_sqrt_product_from_features`) or, without them, pytorch-fid's own computation.
    `allow_singular` computes it anyway (eigenvalues that rounding made negative are clipped to 0:
    both matrices are PSD), for when pytorch-fid's fails.
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
