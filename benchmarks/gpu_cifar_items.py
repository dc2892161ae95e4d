"""gpu_check items that use the CIFAR-10 preset: a short preset run scored by benchmarks/cifar_quality.py,
and FID speed (`sagan evaluate` against PNG files + `python -m pytorch_fid`) on that run's checkpoint."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from cifar_judge import write_toy_archive
from gpu_items import REPO, SAGAN, sh
from PIL import Image

PRESET = REPO / "pipelines" / "project" / "presets" / "cifar10.yaml"
ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's FID Inception weights


def _sets(pairs: list[str]) -> list[str]:
    return [a for s in pairs for a in ("--set", s)]


def _cifar_sets(ctx) -> list[str]:
    """The preset's own values, except the device and (dry run) a toy width."""
    sets = [f"data.source={ctx.archive}", f"train.device={ctx.device}", f"eval.device={ctx.device}"]
    sets += ["tracking.enabled=false", "data.workers=0"]
    if ctx.dry:
        sets += ["model.g_ch=4", "model.d_ch=4", "train.batch_size=8", "eval.dims=64"]
    return sets


def cifar_run(ctx) -> dict:
    """prepare + train the CIFAR-10 preset for the time left (steps from the measured img/s), then
    score the checkpoint with cifar_quality.py (its judge is trained on the first run)."""
    if ctx.dry:
        ctx.archive = write_toy_archive(ctx.work / "cifar10-toy.tar.gz", train_per_class=20, test_per_class=2)
    elif ARCHIVE.is_file():
        ctx.archive = ARCHIVE
    else:
        raise RuntimeError(f"{ARCHIVE} is absent (../shared): no CIFAR-10 data, nothing measured")
    proj = ctx.work / "cifar"
    proj.mkdir(exist_ok=True)
    base = ["--params", str(PRESET), *_sets(_cifar_sets(ctx))]
    sh([*SAGAN, "prepare", "--quiet", *base], proj)
    rate = (ctx.throughput or {}).get("32px bf16", {}).get("img_per_s") if not ctx.dry else None
    reserve = 150  # FID speed and the judge after this item
    seconds = max(30.0, ctx.deadline - time.time() - reserve)
    steps = ctx.size["cifar_steps"] if ctx.dry or not rate else max(100, int(0.8 * seconds * rate / 64))
    t0 = time.perf_counter()
    sets = _sets([f"train.steps={steps}", f"train.checkpoint_every={steps}", f"train.sample_every={steps}"])
    sh([*SAGAN, "train", "--quiet", *base, *sets], proj, timeout=seconds + 120)
    train_s = time.perf_counter() - t0
    ctx.cifar_project, ctx.cifar_base = proj, base
    score = ctx.work / "cifar_quality.json"
    cmd = [sys.executable, str(REPO / "benchmarks/cifar_quality.py"), "--archive", str(ctx.archive)]
    cmd += [
        "--checkpoint",
        str(proj / "models/checkpoint.pt"),
        "--json",
        str(score),
        "--device",
        str(ctx.device),
    ]
    cmd += ["--cache-dir", str(ctx.work / "judge"), "--samples", str(ctx.size["quality_samples"])]
    sh(cmd + ["--epochs", str(ctx.size["judge_epochs"])], REPO, timeout=900)
    q = json.loads(score.read_text())
    got = q["checkpoints"][0]
    return {
        "steps": steps,
        "train_seconds": train_s,
        "judge_test_accuracy": q["judge"]["test_accuracy"],
        "class_accuracy": got["class_accuracy"],
        "judge_fd": got["judge_fd"],
        "ceiling_class_accuracy": q["ceiling"]["class_accuracy"],
        "ceiling_judge_fd": q["ceiling"]["judge_fd"],
    }


def _torch_home(ctx) -> tuple[Path, str]:
    """The real FID weights when the torch hub cache has them, else the tests' deterministic stand-in."""
    hub = Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS
    if hub.is_file():
        return Path(torch.hub.get_dir()).parent, "pytorch-fid weights"
    sys.path.insert(0, str(REPO / "tests"))
    from standin_inception import write_standin

    home = ctx.work / "torch_home"
    write_standin(home)
    return home, "stand-in weights (tests/standin_inception.py): FIDs comparable, not real FIDs"


def _write_pngs(images: np.ndarray, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img.squeeze() if img.shape[-1] == 1 else img).save(folder / f"{i:05d}.png")


def fid_speed(ctx) -> dict:
    """Same samples, same reference statistics: `sagan evaluate` vs PNGs + pytorch_fid; |ΔFID| < 1e-3."""
    from sagan_core.data.dataset import open_prepared
    from sagan_core.evaluate.protocol import sample_uint8
    from sagan_core.model.checkpoint import load_generator

    proj = getattr(ctx, "cifar_project", None)
    if proj is None:
        raise RuntimeError("needs the CIFAR-10 run's checkpoint (that item failed)")
    home, weights = _torch_home(ctx)
    env = {"TORCH_HOME": str(home)}
    n, dims, batch, dev = ctx.size["fid_samples"], ctx.size["fid_dims"], 200, str(ctx.device)
    images = open_prepared(proj / "data/prepared").images  # sorted by class: take every k-th image
    real = np.asarray(images[:: max(1, len(images) // n)][:n]).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    _write_pngs(real, ctx.work / "fid/real")
    ref = ctx.work / "fid/ref.npz"
    fid_cli = [sys.executable, "-m", "pytorch_fid", "--device", dev, "--dims", str(dims)]
    fid_cli += ["--batch-size", str(batch)]
    sh([*fid_cli, "--save-stats", str(ctx.work / "fid/real"), str(ref)], REPO, env)
    sets = [
        f"eval.num_samples={n}",
        f"eval.batch_size={batch}",
        f"eval.dims={dims}",
        f"eval.reference_split={ref}",
    ]
    sets += [f"eval.kid_subset_size={min(1000, n // 2)}", "eval.seed=0"]
    t0 = time.perf_counter()
    sh([*SAGAN, "evaluate", "--quiet", *ctx.cifar_base, *_sets(sets)], proj, env)
    ours_s = time.perf_counter() - t0
    ours = json.loads((proj / "metrics/eval.json").read_text())["fid"]
    t0 = time.perf_counter()
    g, _ = load_generator(proj / "models/checkpoint.pt", device=ctx.device)
    fake = np.concatenate(
        [b.permute(0, 2, 3, 1).cpu().numpy() for b in sample_uint8(g, n, batch, 0, ctx.device)]
    )
    _write_pngs(fake, ctx.work / "fid/fake")
    r = sh([*fid_cli, str(ctx.work / "fid/fake"), str(ref)], REPO, env)
    theirs_s = time.perf_counter() - t0
    theirs = float(re.search(r"FID:\s*([-\d.eE+]+)", r.stdout).group(1))
    out = {
        "samples": n,
        "dims": dims,
        "weights": weights,
        "sagan_evaluate_s": ours_s,
        "png_pytorch_fid_s": theirs_s,
    }
    out |= {"fid_sagan": ours, "fid_pytorch_fid": theirs, "abs_delta": abs(ours - theirs)}
    if not abs(ours - theirs) < 1e-3:
        raise RuntimeError(
            f"|ΔFID| = {abs(ours - theirs):.2e} >= 1e-3 (sagan {ours:.6f}, pytorch_fid {theirs:.6f})"
        )
    return out
