"""Precision, recall, density, coverage (sagan_core/evaluate/prdc.py) against the reference `prdc`
package (Naeem et al.'s) and against a plainly written loop over the published definitions, on fixed
features; in blocks as small as one row the values are the same."""

from __future__ import annotations

import numpy as np
import pytest

from sagan_core.evaluate.prdc import kth_neighbour_radii, prdc

pytestmark = pytest.mark.unit


def features(seed: int, n: int, shift: float, dims: int = 32) -> np.ndarray:
    """Clustered features of Inception-like magnitude (~1e2-1e3), float32 like FID's."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 300, (4, dims))  # one shared set of modes
    return (centres[rng.integers(0, 4, n)] + rng.normal(shift, 120, (n, dims))).astype(np.float32)


def loop_prdc(real: np.ndarray, fake: np.ndarray, k: int) -> dict[str, float]:
    """The definitions, one pair at a time (Kynkäänniemi et al. 2019; Naeem et al. 2020)."""
    r, f = real.astype(np.float64), fake.astype(np.float64)

    def dist(a, b):
        return float(np.sqrt(((a - b) ** 2).sum()))

    def radius(points, i):  # distance to the k-th nearest other point
        return sorted(dist(points[i], points[j]) for j in range(len(points)) if j != i)[k - 1]

    rr = [radius(r, i) for i in range(len(r))]
    fr = [radius(f, j) for j in range(len(f))]
    inside = [[dist(r[i], f[j]) < rr[i] for i in range(len(r))] for j in range(len(f))]  # fake j in ball i
    precision = np.mean([any(row) for row in inside])
    recall = np.mean([any(dist(r[i], f[j]) < fr[j] for j in range(len(f))) for i in range(len(r))])
    density = np.mean([sum(row) for row in inside]) / k
    coverage = np.mean([min(dist(r[i], f[j]) for j in range(len(f))) < rr[i] for i in range(len(r))])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_matches_the_published_definitions_written_as_loops():
    real, fake = features(0, 60, 0.0), features(1, 45, 40.0)
    want = loop_prdc(real, fake, k=5)
    for block in (1, 7, 10**9):  # one distance row per block, ragged blocks, one block
        got = prdc(real, fake, k=5, block_elements=block)
        assert got == pytest.approx(want, abs=1e-12), block


def test_matches_the_reference_prdc_package():
    from prdc import compute_prdc  # the reference implementation (a dev dependency)

    real, fake = features(2, 400, 0.0), features(3, 300, 60.0)
    want = compute_prdc(real, fake, nearest_k=5)
    got = prdc(real, fake, k=5, block_elements=5000)
    assert got == pytest.approx({k: float(v) for k, v in want.items()}, abs=1e-12)
    assert 0 < got["precision"] < 1 and 0 < got["coverage"] < 1  # a real test, not a corner case


def test_identical_sets_have_full_precision_recall_and_coverage():
    real = features(4, 80, 0.0)
    got = prdc(real, real.copy())
    assert got["precision"] == got["recall"] == got["coverage"] == 1.0


def test_radii_skip_the_point_itself():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert kth_neighbour_radii(__import__("torch").as_tensor(x), k=1).tolist() == [1.0, 1.0, 2.0, 4.0]


def test_too_few_samples_is_an_error():
    with pytest.raises(ValueError, match="more than k=5"):
        prdc(features(5, 5, 0.0), features(6, 50, 0.0))
