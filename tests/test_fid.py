"""FID / IS / KID math against independent computations, and parity with pytorch-fid's image path.

Longer than 300 lines: each metric case sits beside the independent computation it is checked
against; the parity cases share the stand-in weights and image folders built here.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid.fid_score import calculate_frechet_distance
from scipy import linalg
from torchvision.utils import save_image

from sagan_core.errors import ConfigError, SaganError
from sagan_core.evaluate import frechet, metrics
from sagan_core.evaluate import inception as inc

pytestmark = pytest.mark.unit


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The symmetric textbook form, tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), via eigh (PSD-exact)."""
    w, v = linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    w2, _ = linalg.eigh(r1 @ s2 @ r1)
    return float(
        ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(w2, 0, None)).sum()
    )


def random_cov(rng, d, rank=None):
    a = rng.normal(size=(d, rank or 2 * d))
    return a @ a.T / a.shape[1]


def test_frechet_matches_scipy_on_known_gaussians():
    rng = np.random.default_rng(0)
    d = 16
    # Diagonal covariances have the closed form sum (sqrt(a) - sqrt(b))^2 + |mu1 - mu2|^2.
    a, b = rng.uniform(0.1, 2, d), rng.uniform(0.1, 2, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    ours = frechet.frechet_distance(metrics.Stats(mu1, np.diag(a)), metrics.Stats(mu2, np.diag(b)))
    assert ours == pytest.approx(closed, rel=1e-9)
    s1, s2 = random_cov(rng, d), random_cov(rng, d)
    ours = frechet.frechet_distance(metrics.Stats(mu1, s1), metrics.Stats(mu2, s2))
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-8)
    assert frechet.frechet_distance(metrics.Stats(mu1, s1), metrics.Stats(mu1, s1)) == pytest.approx(
        0, abs=1e-8
    )


def test_frechet_nearly_singular_covariance():
    rng = np.random.default_rng(1)
    d = 32
    s1 = random_cov(rng, d, rank=5) + 1e-10 * np.eye(d)  # nearly singular, like features from few samples
    s2 = random_cov(rng, d, rank=6) + 1e-10 * np.eye(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    ours = frechet.frechet_distance(metrics.Stats(mu1, s1), metrics.Stats(mu2, s2))
    assert np.isfinite(ours)
    assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-4, abs=1e-4)


def features(rng, n, d, decay):
    """n samples of d-dim features with a power-law spectrum, like Inception features."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return rng.normal(size=(n, d)) @ (q * np.arange(1, d + 1.0) ** (-decay / 2)).T


def stats_of(x):
    return metrics.Stats(x.mean(0), np.cov(x, rowvar=False))


def test_frechet_fast_path_equals_pytorch_fid_when_well_conditioned():
    rng = np.random.default_rng(2)
    d = 256
    for n, decay in [(300, 2.0), (1000, 1.0)]:  # condition numbers ~1e6 .. 1e3
        a, b = stats_of(features(rng, n, d, decay)), stats_of(1.1 * features(rng, n, d, decay) + 0.05)
        assert frechet.trace_sqrt_product(a.sigma, b.sigma) is not None  # the eigh/SVD path is taken
        ref = calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
        assert frechet.frechet_distance(a, b) == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_frechet_fast_path_with_dead_features_equals_pytorch_fid():
    """Features that are 0 on every image (dead ReLUs) are zero rows/columns of a covariance."""
    rng = np.random.default_rng(4)
    x1, x2 = features(rng, 600, 128, 1.0), features(rng, 700, 128, 1.0) + 0.2
    x1[:, :10] = 0  # dead in the first set only
    x2[:, 5:12] = 0  # dead in the second, overlapping the first's
    acc1, acc2 = metrics.StatsAccumulator(), metrics.StatsAccumulator()
    acc1.add(x1)
    acc2.add(x2)
    a, b = acc1.result(), acc2.result()
    assert not a.sigma[:, :10].any() and not b.sigma[:, 5:12].any()
    assert frechet.trace_sqrt_product(a.sigma, b.sigma) is not None
    ref = calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert frechet.frechet_distance(a, b) == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_frechet_singular_covariance_is_pytorch_fid_exactly():
    rng = np.random.default_rng(3)
    a, b = stats_of(features(rng, 40, 64, 1.0)), stats_of(features(rng, 50, 64, 1.0) + 0.1)  # n < d
    assert frechet.trace_sqrt_product(a.sigma, b.sigma) is None
    assert frechet.frechet_distance(a, b) == calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def test_frechet_with_fewer_samples_than_dims_skips_the_eigendecompositions(monkeypatch):
    """n <= dims: the covariance is singular by construction, so the exact path is not even tried."""
    rng = np.random.default_rng(4)
    a, b = metrics.StatsAccumulator(), metrics.StatsAccumulator()  # what Inception passes accumulate
    a.add(features(rng, 64, 64, 1.0))  # n == dims
    b.add(features(rng, 200, 64, 1.0) + 0.1)
    a, b = a.result(), b.result()
    assert (a.num, b.num) == (64, 200)

    def doomed(*args, **kwargs):
        raise AssertionError("eigendecomposition path attempted for a necessarily singular covariance")

    monkeypatch.setattr(frechet, "trace_sqrt_product", doomed)
    value, method = frechet.frechet_with_method(a, b)
    assert method == "sqrtm"
    assert value == calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def psd_sqrt(s):
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_few_samples_with_features_is_exact_in_sample_space(caplog):
    """n < dims with the features kept (in-training scoring, `sagan evaluate`, small `sagan fid`
    folders): the trace comes from the n1 x n2 cross-Gram matrix. Expected, independently:
    Tr (S1 S2)^1/2 = Tr (R1 S2 R1)^1/2 with R1 = S1^1/2, both symmetric PSD roots by eigh; and
    pytorch-fid's sqrtm value to 1e-5 relative (the issue's tolerance; measured ~1e-7)."""
    rng = np.random.default_rng(5)
    d = 128
    for n1, n2, scale in [(40, 50, 1.0), (100, 100, 30.0)]:  # 30: stand-in-sized features
        accs = [metrics.StatsAccumulator(keep_features=True) for _ in range(2)]
        accs[0].add(scale * features(rng, n1, d, 1.0))
        accs[1].add(scale * (features(rng, n2, d, 1.0) + 0.1))
        a, b = (acc.result() for acc in accs)
        r1 = psd_sqrt(a.sigma)
        tr = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ b.sigma @ r1), 0, None)).sum()
        diff = a.mu - b.mu
        expected = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr
        with caplog.at_level("WARNING", logger="sagan"):
            value, method = frechet.frechet_with_method(a, b)
        assert method == "gram-svd"
        # the eigh reference takes square roots of rounding-level eigenvalues in S1's null space
        # (~sqrt(eps) each, relative), so the two exact formulas agree to ~1e-8, not to eps
        assert value == pytest.approx(expected, rel=1e-6)
        theirs = calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
        assert abs(value - theirs) <= 1e-5 * theirs
    assert not caplog.records  # n < dims is expected here: no warning

    # features that are not all of the samples behind mu/sigma are not used
    partial = metrics.Stats(a.mu, a.sigma, a.features[:-1], n=a.n)
    assert frechet.frechet_with_method(partial, b)[1] in ("sqrtm", "eigh-svd-singular")


def test_frechet_where_pytorch_fid_sqrtm_fails_is_the_exact_singular_value(caplog):
    """Few samples of large features: pytorch-fid's sqrtm result has an imaginary part > 1e-3 and it
    raises. The value must then be exact: with S_i = X_i^T X_i / (n - 1) (X_i centred), the nonzero
    eigenvalues of S1 S2 are the squared singular values of X1 X2^T / (n - 1), so
    Tr (S1 S2)^1/2 is their sum, computed here in the n x n sample space, not from the covariances."""
    rng = np.random.default_rng(0)
    n, d = 10, 64
    x1, x2 = 100 * rng.normal(size=(n, d)), 100 * rng.normal(size=(n, d)) + 1
    a, b = stats_of(x1), stats_of(x2)
    with pytest.raises(ValueError, match="Imaginary component"):
        calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    tr_sqrt = np.linalg.svd(c1 @ c2.T / (n - 1), compute_uv=False).sum()
    expected = ((a.mu - b.mu) ** 2).sum() + np.trace(a.sigma) + np.trace(b.sigma) - 2 * tr_sqrt
    with caplog.at_level("WARNING", logger="sagan"):
        value, method = frechet.frechet_with_method(a, b)
    assert method == "eigh-svd-singular" and "sqrtm failed" in caplog.text
    assert value == pytest.approx(expected, rel=1e-9)


def test_fewer_samples_than_dims_says_one_calm_line_and_the_same_numbers(caplog, capsys, monkeypatch):
    """n < dims (the demo: 250 samples in 2048 dims): one calm INFO line per sample count instead of
    scipy's / pytorch-fid's singular-matrix and sqrtm-failed messages; the FID is unchanged."""
    monkeypatch.setattr(frechet, "_CALM_SAID", set())
    rng = np.random.default_rng(0)
    x1, x2 = 100 * rng.normal(size=(10, 64)), 100 * rng.normal(size=(10, 64)) + 1  # sqrtm fails here
    p1, p2 = stats_of(x1), stats_of(x2)
    a, b = metrics.Stats(p1.mu, p1.sigma, n=10), metrics.Stats(p2.mu, p2.sigma, n=10)  # counts known
    plain = (metrics.Stats(a.mu, a.sigma), metrics.Stats(b.mu, b.sigma))  # no count: the loud path
    loud = frechet.frechet_with_method(*plain)
    assert loud[1] == "eigh-svd-singular"  # pytorch-fid's sqrtm failed on these
    caplog.clear()
    with caplog.at_level("DEBUG", logger="sagan"):
        first = frechet.frechet_with_method(a, b)
        second = frechet.frechet_with_method(a, b)
    assert first == second == loud  # the same numbers
    calm = [r for r in caplog.records if "rank-deficient" in r.getMessage()]
    assert len(calm) == 1 and calm[0].levelname == "INFO"
    assert calm[0].getMessage().startswith("FID at 10 samples in 64 dims: the covariance is rank-deficient")
    assert "eval.num_samples >= 64" in calm[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("sagan")]
    assert capsys.readouterr().out == ""


def test_frechet_errors():
    with pytest.raises(ConfigError, match="different dimensions"):
        frechet.frechet_distance(metrics.Stats(np.zeros(4), np.eye(4)), metrics.Stats(np.zeros(8), np.eye(8)))
    with pytest.raises(SaganError, match="NaN"):
        frechet.frechet_distance(
            metrics.Stats(np.full(4, np.nan), np.eye(4)), metrics.Stats(np.zeros(4), np.eye(4))
        )


def test_streaming_stats_equal_numpy():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(203, 12)) * 3 + 50).astype(np.float32)  # large mean: cancellation test
    acc = metrics.StatsAccumulator(keep_features=True)
    for i in range(0, len(x), 50):
        acc.add(torch.from_numpy(x[i : i + 50]))
    s = acc.result()
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(s.mu, x64.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.sigma, np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(s.features, x)
    with pytest.raises(SaganError, match="not finite"):
        metrics.StatsAccumulator().add(torch.tensor([[1.0, float("nan")]]))


def original_inception_score(logits: np.ndarray, splits: int) -> tuple[float, float]:
    """The improved-GAN reference code's loop, on softmax probabilities."""
    e = np.exp(logits - logits.max(1, keepdims=True))
    preds = e / e.sum(1, keepdims=True)
    scores = []
    for i in range(splits):
        part = preds[(i * preds.shape[0] // splits) : ((i + 1) * preds.shape[0] // splits), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    acc = metrics.ISAccumulator(len(logits), splits)
    acc.add(torch.as_tensor(logits))
    return acc.result()


def test_inception_score_hand_cases():
    k = 8
    # Confident and evenly spread over k classes in every split: IS = k exactly; uniform: IS = 1.
    confident = np.eye(k)[np.arange(80) % k] * 60.0
    mean, std = inception_score(confident, splits=10)
    assert mean == pytest.approx(k, rel=1e-6) and std == pytest.approx(0, abs=1e-6)
    mean, std = inception_score(np.zeros((50, 1008)), splits=10)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0, abs=1e-12)
    # Streamed in uneven batches, random logits: equal to the reference loop (103: uneven splits).
    logits = np.random.default_rng(3).normal(size=(103, 20)) * 3
    acc = metrics.ISAccumulator(103, 10)
    for i in range(0, 103, 17):
        acc.add(torch.from_numpy(logits[i : i + 17]))
    np.testing.assert_allclose(acc.result(), original_inception_score(logits, 10), rtol=1e-9)


def unbiased_mmd_loops(x, y):
    """MMD^2_u by its definition, with explicit loops over pairs."""
    d, m = x.shape[1], len(x)

    def k(a, b):
        return (a @ b / d + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_hand_case():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(9, 5)).astype(np.float32)
    y = (rng.normal(size=(9, 5)) + 0.5).astype(np.float32)
    # Subsets of all 9 samples are permutations: every subset gives the full-set MMD, std 0.
    mean, std = metrics.kid(x, y, subsets=4, subset_size=100)
    assert mean == pytest.approx(unbiased_mmd_loops(x.astype(float), y.astype(float)), rel=1e-9)
    assert std == pytest.approx(0, abs=1e-12)
    # Unbiased: two samples of one distribution average to ~0; a shift is clearly positive.
    a, b = rng.normal(size=(400, 5)), rng.normal(size=(400, 5))
    assert abs(metrics.kid(a, b, subsets=20, subset_size=100)[0]) < 0.02
    assert metrics.kid(a, b + 1, subsets=20, subset_size=100)[0] > 0.2
    # Both code paths (precomputed kernels for small sets, per-subset kernels for large ones) equal
    # the loop definition on the same random subsets.
    for n in (40, 3001):
        f1, f2 = rng.normal(size=(n, 5)), rng.normal(size=(n, 5)) + 0.3
        draw = np.random.default_rng(7)
        expected = []
        for _ in range(3):
            a, b = draw.choice(n, 6, replace=False), draw.choice(n, 6, replace=False)
            expected.append(unbiased_mmd_loops(f1[a], f2[b]))
        mean, std = metrics.kid(f1, f2, subsets=3, subset_size=6, seed=7)
        assert mean == pytest.approx(np.mean(expected), rel=1e-9)
        assert std == pytest.approx(np.std(expected), rel=1e-7)


# ---------------------------------------------------------------- parity with pytorch-fid's image path


def test_quantize_and_range_match_png_and_pytorch_fid_dataset(tmp_path):
    from pytorch_fid.fid_score import ImagePathDataset
    from torchvision import transforms as TF

    g = torch.Generator().manual_seed(0)
    for channels in (1, 3):
        x = torch.rand(6, channels, 9, 7, generator=g) * 2.4 - 1.2  # includes out-of-range values
        x[0, 0, 0, :4] = torch.tensor([-1.0, 1.0, 0.0, 1 / 255])
        files = []
        for i in range(len(x)):
            files.append(tmp_path / f"c{channels}_{i}.png")
            save_image(x[i : i + 1], files[-1], normalize=True, value_range=(-1, 1))
        u8 = inc.quantize(x)
        png = torch.stack([torch.from_numpy(np.array(Image.open(f))).permute(2, 0, 1) for f in files])
        assert torch.equal(u8.expand(-1, 3, -1, -1), png)  # save_image writes gray as RGB
        theirs = torch.stack([ImagePathDataset(files, TF.ToTensor())[i] for i in range(len(files))])
        assert torch.equal(inc.to_inception_input(u8), theirs)


def test_features_match_pytorch_fid_get_activations(tmp_path, monkeypatch, standin_torch_home):
    from pytorch_fid.fid_score import get_activations
    from pytorch_fid.inception import InceptionV3

    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))
    u8 = torch.randint(0, 256, (4, 1, 16, 16), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    files = []
    for i in range(len(u8)):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(u8[i, 0].numpy()).save(files[-1])
    theirs = get_activations(files, InceptionV3([0]), batch_size=4, dims=64, num_workers=0)
    net = inc.load_net(inc.resolve_weights(), 64, False, torch.device("cpu"))
    ours, _ = inc.run_batch(net, u8, torch.device("cpu"))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5, atol=1e-6)
    assert ours.std(0).mean() > 1e-3  # calibrated stand-in: features vary with content


def test_missing_weights_name_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr(inc, "WEIGHTS_URL", "http://127.0.0.1:9/nothing.pth")  # refused at once
    with pytest.raises(SaganError) as e:
        inc.resolve_weights()
    assert inc.WEIGHTS_NAME in str(e.value) and str(tmp_path / "empty" / "hub" / "checkpoints") in str(
        e.value
    )
    with pytest.raises(ConfigError, match="eval.inception_weights"):
        inc.resolve_weights(str(tmp_path / "nope.pth"))


def test_an_explicit_weights_file_builds_pytorch_fids_network_and_leaves_torch_home(
    tmp_path, monkeypatch, standin_torch_home
):
    # pytorch-fid's InceptionV3 takes no weights path (inception._hub_holding works around it): when
    # its constructor changes, this fails and says to use the new parameter instead.
    from pytorch_fid.inception import InceptionV3

    params = set(inspect.signature(InceptionV3).parameters)
    assert params == {
        "output_blocks",
        "resize_input",
        "normalize_input",
        "requires_grad",
        "use_fid_inception",
    }
    explicit = tmp_path / "mine.pth"
    explicit.symlink_to(standin_torch_home / "hub" / "checkpoints" / inc.WEIGHTS_NAME)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    u8 = torch.randint(0, 256, (3, 3, 16, 16), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    ours = inc.run_batch(
        inc.load_net(inc.resolve_weights(str(explicit)), 64, False, torch.device("cpu")),
        u8,
        torch.device("cpu"),
    )
    assert os.environ["TORCH_HOME"] == str(tmp_path / "empty") and not (tmp_path / "empty").exists()
    monkeypatch.setenv("TORCH_HOME", str(standin_torch_home))
    theirs = inc.run_batch(
        inc.load_net(inc.resolve_weights(), 64, False, torch.device("cpu")), u8, torch.device("cpu")
    )
    assert torch.equal(ours[0], theirs[0])
    (tmp_path / "foreign.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SaganError, match="not pytorch-fid Inception weights"):
        inc.InceptionFeatures(tmp_path / "foreign.pth")


# ---------------------------------------------------------------- `sagan fid` vs `python -m pytorch_fid`


def write_folder(folder, images: np.ndarray) -> None:
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im[0]).save(folder / f"{i:04d}.png")


def pytorch_fid_cli(cwd, a: str, b: str, env: dict) -> float:
    """The FID `python -m pytorch_fid A B` prints (64 dims, CPU, no loader workers)."""
    cmd = [sys.executable, "-m", "pytorch_fid", a, b, "--dims", "64", "--device", "cpu", "--num-workers", "0"]
    ref = subprocess.run(cmd, cwd=cwd, env=os.environ | env, capture_output=True, text=True, check=True)
    return float(re.search(r"FID:\s+(\S+)", ref.stdout).group(1))


@pytest.mark.e2e  # two CLIs over the same folders: ~40 s on 2 cores
def test_sagan_fid_agrees_with_pytorch_fid_cli(tmp_path, prepared_demo, standin_torch_home):
    from helpers import run_cli

    images = np.load(prepared_demo / "images.npy", mmap_mode="r")
    n = 66  # > 64 features: full-rank covariances
    write_folder(tmp_path / "a", np.asarray(images[:n]))
    write_folder(tmp_path / "b", np.asarray(images[n : 2 * n]) // 2 + 60)  # dimmer digits: clearly apart
    (tmp_path / "a" / "notes.txt").write_text("ignored, as pytorch-fid ignores it")
    env = {"TORCH_HOME": str(standin_torch_home)}
    theirs = pytorch_fid_cli(tmp_path, "a", "b", env)
    assert theirs > 1.0  # the calibrated stand-in separates the two folders

    r = run_cli(["fid", "--save-stats", "b", "b.npz", "--dims", "64", "-q"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    with np.load(tmp_path / "b.npz") as f:
        assert f["mu"].shape == (64,) and f["sigma"].shape == (64, 64)
    r = run_cli(["fid", "a", "b.npz", "--dims", "64", "-q"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    ours = float(re.search(r"FID:\s+(\S+)", r.stdout).group(1))
    # sagan fid runs the fast Inception path (BatchNorm folded, channels_last): features equal to
    # relative rounding (~3e-6), so the FIDs agree by relative error, not to a fixed number of digits
    assert abs(ours - theirs) <= 1e-5 * theirs, (ours, theirs)


def test_sagan_fid_bad_input_is_one_line_exit_2_before_any_feature_pass(tmp_path, standin_torch_home):
    from helpers import cli

    write_folder(tmp_path / "a", np.zeros((3, 1, 32, 32), dtype=np.uint8))
    np.savez(tmp_path / "b.npz", mu=np.zeros(64), sigma=np.eye(64))
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.png").write_text("not a png")
    np.savez(tmp_path / "s192.npz", mu=np.zeros(192), sigma=np.eye(192))
    for args, needle in [
        (["empty", "b.npz"], "no images"),
        (["junk", "b.npz", "--dims", "64"], "not a readable image"),
        (["s192.npz", "b.npz"], "different dimensions"),
        (["missing", "b.npz"], "no such folder"),
        (["a"], "expected two paths"),
    ]:
        r = cli(["fid", *args, "-q"], tmp_path, {"TORCH_HOME": str(standin_torch_home)})
        assert r.returncode == 2, (args, r.stderr)
        assert needle in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.e2e  # two CLIs over the same folders: ~20 s on 2 cores
def test_sagan_fid_below_the_feature_dimension_agrees_with_pytorch_fid_cli(
    tmp_path, prepared_demo, standin_torch_home
):
    from helpers import run_cli

    images = np.load(prepared_demo / "images.npy", mmap_mode="r")
    env = {"TORCH_HOME": str(standin_torch_home)}
    # Fewer images than features (singular covariances, like the 300/300 CPU protocol): sagan fid
    # takes the Fréchet trace from the images' cross-Gram matrix, pytorch-fid from scipy's sqrtm.
    write_folder(tmp_path / "c", np.asarray(images[:40]))
    write_folder(tmp_path / "d", np.asarray(images[40:80]) // 2 + 60)
    theirs = pytorch_fid_cli(tmp_path, "c", "d", env)
    r = run_cli(["fid", "c", "d", "--dims", "64", "-q"], tmp_path, env)
    assert r.returncode == 0, r.stderr
    ours = float(re.search(r"FID:\s+(\S+)", r.stdout).group(1))
    assert theirs > 1.0 and abs(ours - theirs) <= 1e-5 * theirs, (ours, theirs)


@pytest.mark.integration
def test_folder_decoding_in_workers_equals_serial_and_reports_bad_files(tmp_path):
    """Worker-process decoding (overlapping the Inception pass) yields exactly the serial batches."""

    from sagan_core.data.decode import read_rgb_chunks
    from sagan_core.evaluate.fid import _uint8_batches_from_files, list_images

    rng = np.random.default_rng(0)
    for i in range(7):
        mode = "L" if i % 3 == 0 else "RGB"
        arr = rng.integers(0, 256, (12, 12) if mode == "L" else (12, 12, 3), dtype=np.uint8)
        Image.fromarray(arr, mode).save(tmp_path / f"{i:02d}.png")
    files = list_images(tmp_path)
    serial = list(_uint8_batches_from_files(files, 3, workers=0))
    parallel = list(_uint8_batches_from_files(files, 3, workers=2))
    assert [b.shape for b in serial] == [(3, 3, 12, 12), (3, 3, 12, 12), (1, 3, 12, 12)]
    assert all(torch.equal(s, p) for s, p in zip(serial, parallel, strict=True))
    (tmp_path / "07.png").write_bytes(b"not a png")
    chunks = [files[:3], files[3:], [tmp_path / "07.png"]]
    with pytest.raises(ConfigError, match="07.png: not a readable image"):
        list(read_rgb_chunks(chunks, workers=2))
