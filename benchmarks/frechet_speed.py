"""The Fréchet-distance step alone: pytorch-fid's `calculate_frechet_distance` (scipy sqrtm) vs ours.

Synthetic 2048-d statistics of `--samples` feature vectors with a power-law spectrum (like pool3
features), some features dead (exactly 0) in each set; well-conditioned when samples > dims.

  python benchmarks/frechet_speed.py --samples 4000
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from pytorch_fid.fid_score import calculate_frechet_distance

from sagan_core.evaluate import frechet, metrics


def features(rng: np.random.Generator, n: int, d: int, scale: float, dead: slice) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x = np.maximum(rng.normal(size=(n, d)) @ (q * np.arange(1, d + 1.0) ** -0.5).T * scale + 0.3, 0)
    x[:, dead] = 0
    return x.astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--dims", type=int, default=2048)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    stats = []
    for scale, dead in [(1.0, slice(0, 20)), (1.1, slice(10, 40))]:
        acc = metrics.StatsAccumulator()
        acc.add(features(rng, args.samples, args.dims, scale, dead))
        stats.append(acc.result())
    a, b = stats
    warnings.simplefilter("ignore")  # scipy's LinAlgWarning on the singular product (dead features)
    t0 = time.perf_counter()
    ref = calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    t_ref = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours, method = frechet.frechet_with_method(a, b)
    t_ours = time.perf_counter() - t0
    print(f"{args.samples} samples, {args.dims} dims")
    print(f"pytorch-fid (scipy sqrtm): {ref:.9f}  {t_ref:.1f} s")
    print(f"sagan ({method}):         {ours:.9f}  {t_ours:.1f} s")
    print(f"|difference| {abs(ours - ref):.2e}; speed-up {t_ref / t_ours:.1f}x")


if __name__ == "__main__":
    main()
