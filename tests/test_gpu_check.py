"""benchmarks/gpu_check.py --dry-run (every item at toy size on CPU, so the script cannot rot while no
GPU is around) and benchmarks/cifar_quality.py's behaviour without the shared CIFAR-10 archive."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import REPO

pytestmark = pytest.mark.unit

BENCH = REPO / "benchmarks"


def test_cifar_quality_says_clearly_when_the_archive_is_absent(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    import cifar_quality

    missing = tmp_path / "shared/datasets/cifar10-jpg.tar.gz"
    assert cifar_quality.main(["--archive", str(missing), "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "not found" in err and "nothing was measured" in err


@pytest.mark.integration  # trains the judge (~10 s on an idle core)
def test_cifar_quality_scores_a_checkpoint_against_a_ceiling(tmp_path):
    """On a toy archive: the figures exist, lie in their ranges, and real images beat an untrained G."""
    sys.path.insert(0, str(BENCH))
    import cifar_quality
    from cifar_judge import write_toy_archive

    from sagan_core.model.checkpoint import save_atomic
    from sagan_core.model.networks import ModelSpec, build_models

    archive = write_toy_archive(tmp_path / "toy.tar.gz", train_per_class=30, test_per_class=10)
    spec = ModelSpec(resolution=32, channels=3, num_classes=10, z_dim=16, g_ch=4, d_ch=4)
    g, d = build_models(spec)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    save_atomic(
        {
            "spec": spec.to_dict(),
            "generator": g.state_dict(),
            "generator_ema": g.state_dict(),
            "discriminator": d.state_dict(),
            "step": 0,
            "class_names": classes,
        },
        tmp_path / "ckpt.pt",
    )
    out = tmp_path / "q.json"
    args = ["--archive", str(archive), "--cache-dir", str(tmp_path / "cache"), "--samples", "30"]
    assert (
        cifar_quality.main(
            [*args, "--epochs", "3", "--checkpoint", str(tmp_path / "ckpt.pt"), "--json", str(out)]
        )
        == 0
    )
    r = json.loads(out.read_text())
    got, ceiling = r["checkpoints"][0], r["ceiling"]
    assert 0 <= got["class_accuracy"] <= 1 and 0 <= ceiling["class_accuracy"] <= 1
    assert ceiling["judge_fd"] < got["judge_fd"]  # real held-out images are closer to the test split
    assert r["judge"]["train_images"] == 270  # 30 per class, 3 per class held out
    cached = list((tmp_path / "cache").glob("judge-*.pt"))
    assert len(cached) == 1  # trained once; a second run reuses it
    assert cifar_quality.main([*args, "--epochs", "3"]) == 0
    assert list((tmp_path / "cache").glob("judge-*.pt")) == cached


@pytest.mark.e2e
def test_gpu_check_dry_run_runs_its_items_on_cpu(tmp_path):
    """The script end to end at toy size (~20 s) on its cheapest items. ddp_two_ranks, cifar_run and
    fid_speed (~45 s more, four more CLIs) run in full on every GPU machine; in this suite their parts
    are test_ddp.py's `sagan train` under torchrun, test_cifar_quality_scores_a_checkpoint_against_a_ceiling
    (the scorer), test_init_e2e's cifar10 preset (the run) and test_fid's pytorch-fid parity tests."""
    out = tmp_path / "gpu_check.json"
    items = ["cuda_tests", "matmul_rate", "throughput"]
    cmd = [sys.executable, str(BENCH / "gpu_check.py"), "--dry-run", "--out", str(out), "--only", *items]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env())
    report = json.loads(out.read_text())
    items = report["items"]
    assert r.returncode == 0, {k: v.get("error") for k, v in items.items()}
    assert set(items) == {"cuda_tests", "matmul_rate", "throughput"}
    assert all(v["status"] == "ok" for v in items.values())
    configs = {k: v for k, v in items["throughput"].items() if isinstance(v, dict)}
    assert set(configs) == {f"{r}px {m}" for r in (32, 128) for m in ("fp32", "bf16", "bf16+compile")}
    assert all(v["img_per_s"] > 0 and v["tflops"] > 0 for v in configs.values())
    rates = {k: v for k, v in items["matmul_rate"].items() if k.endswith("_tflops")}
    assert rates and all(v > 0 for v in rates.values()), items["matmul_rate"]
    assert "throughput" in r.stdout and "matmul_rate" in r.stdout  # the table


def _env() -> dict:
    import os

    return os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
