"""The items of benchmarks/gpu_check.py, each a function (ctx) -> dict of figures; a raised exception
is that item's failure. `ctx` holds the device, the size (full on a GPU, toy with --dry-run), a scratch
folder and the figures of earlier items. Not part of the product."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SAGAN = [sys.executable, "-m", "pipelines.cli"]


def sh(
    cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    full = os.environ | {"PYTHONPATH": str(REPO)} | (env or {})
    r = subprocess.run(cmd, cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{' '.join(cmd[2:5])}... exit {r.returncode}: {' | '.join(tail)}")
    return r


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- items


def cuda_tests(ctx) -> dict:
    """tests/test_cuda.py under pytest (on a CPU machine every test skips: reported, not hidden)."""
    # -n 0: in one process (pyproject's addopts would start a pytest-xdist worker per core on one GPU)
    cmd = [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    r = subprocess.run(
        cmd, cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)}, capture_output=True, text=True
    )
    summary = (r.stdout.strip().splitlines() or ["no output"])[-1]
    if r.returncode not in (0, 5):
        raise RuntimeError(summary)
    return {"summary": summary, "note": "" if torch.cuda.is_available() else "no CUDA: skipped"}


def matmul_rate(ctx) -> dict:
    """Dense matmul TFLOP/s in bf16 and fp32 (TF32 as PyTorch's default: off): the ceiling for ratios."""
    n, reps, out = ctx.size["matmul_n"], ctx.size["matmul_reps"], {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        a = torch.randn(n, n, device=ctx.device, dtype=dtype)
        b = torch.randn(n, n, device=ctx.device, dtype=dtype)
        a @ b
        sync(ctx.device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(ctx.device)
        out[f"{name}_tflops"] = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
    ctx.matmul = out
    return out


def image_folder(root: Path, resolution: int, per_class: int = 8, classes: int = 4) -> Path:
    """class folders of random RGB PNGs: a dataset of the right shape for throughput and DDP."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (resolution, resolution, 3), dtype=np.uint8)
            Image.fromarray(img).save(root / f"c{c}" / f"{i}.png")
    return root


def _params(ctx, resolution: int, prepared: Path, **train):
    from sagan_core.config import Params

    ch = ctx.size["width"]
    raw = {
        "data": {"resolution": resolution, "channels": 3, "prepared_dir": str(prepared), "source": "unused"},
        "model": {"g_ch": ch, "d_ch": ch, "conditional": "yes"},
        "train": {"device": str(ctx.device), "batch_size": ctx.size[f"batch{resolution}"], **train},
    }
    return Params.model_validate(raw)


def _prepared(ctx, resolution: int) -> Path:
    from sagan_core.config import DataConfig
    from sagan_core.data.prepare import prepare

    out = ctx.work / f"prepared{resolution}"
    if not (out / "manifest.json").exists():
        # enough images for a full batch (the loader drops incomplete ones) on each of 2 DDP ranks
        per_class = max(8, ctx.size[f"batch{resolution}"] // 2)
        src = image_folder(ctx.work / f"images{resolution}", resolution, per_class=per_class)
        prepare(
            DataConfig(source=str(src), resolution=resolution, channels=3, prepared_dir=str(out)),
            progress=False,
        )
    return out


def _one_config(ctx, resolution: int, precision: str, compile_: bool) -> dict:
    """img/s of the trainer's own train_step, FLOPs per step counted by PyTorch, peak memory."""
    from torch.utils.flop_counter import FlopCounterMode

    from sagan_core.train.trainer import Trainer

    p = _params(ctx, resolution, _prepared(ctx, resolution), precision=precision, compile=compile_)
    t = Trainer(p, progress=False)
    g_run, d_run, d_frozen = t._prepare_modules()  # the trainer's own DDP/compile wrapping
    with FlopCounterMode(display=False) as fc:  # on the eager modules: the same arithmetic
        t.train_step(t.state.G, t.state.D, t.state.D)
    for _ in range(ctx.size["warmup"]):  # compile happens here
        t.train_step(g_run, d_run, d_frozen)
    sync(ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    steps, t0 = ctx.size["steps"], time.perf_counter()
    for _ in range(steps):
        t.train_step(g_run, d_run, d_frozen)
    sync(ctx.device)
    seconds = time.perf_counter() - t0
    flops = fc.get_total_flops() * steps / seconds
    ceiling = ctx.matmul.get("bf16_tflops" if precision == "bf16" else "fp32_tflops") if ctx.matmul else None
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**30 if ctx.device.type == "cuda" else None
    return {
        "img_per_s": steps * p.train.batch_size / seconds,
        "tflops": flops / 1e12,
        "ratio_to_matmul": flops / 1e12 / ceiling if ceiling else None,
        "peak_gib": peak,
        "batch": p.train.batch_size,
        "width": p.model.g_ch,
    }


def throughput(ctx) -> dict:
    """32 px and 128 px at the size's width, fp32 / bf16 / bf16+compile; a failing config is reported.

    The dry run compiles with dynamo's eager backend (the wiring is traced; inductor's C++ build on a
    CPU would take minutes), as tests/test_train.py does."""
    if ctx.dry:
        import functools

        torch.compile = functools.partial(torch.compile, backend="eager")
    out = {}
    for res in (32, 128):
        for name, prec, comp in (
            ("fp32", "fp32", False),
            ("bf16", "bf16", False),
            ("bf16+compile", "bf16", True),
        ):
            try:
                out[f"{res}px {name}"] = _one_config(ctx, res, prec, comp)
            except Exception as e:  # one config failing must not hide the others
                out[f"{res}px {name}"] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
    ctx.throughput = out
    bad = [k for k, v in out.items() if "error" in v]
    if bad:
        raise RuntimeError(f"failed: {', '.join(bad)}; see the figures")
    return out


def ddp_two_ranks(ctx) -> dict:
    """`sagan train` with train.nproc_per_node=2 on the one device (gloo: NCCL refuses two ranks per GPU)."""
    proj = ctx.work / "ddp"
    proj.mkdir(exist_ok=True)
    prepared = _prepared(ctx, 32)
    sets = [
        f"data.prepared_dir={prepared}",
        "data.channels=3",
        f"train.device={ctx.device}",
        "train.nproc_per_node=2",
    ]
    sets += ["model.g_ch=8", "model.d_ch=8", "train.batch_size=8", f"train.steps={ctx.size['ddp_steps']}"]
    env = {"SAGAN_DIST_BACKEND": "gloo", "SAGAN_TRACKING": "0"}
    t0 = time.perf_counter()
    sh([*SAGAN, "train", "--quiet", *[a for s in sets for a in ("--set", s)]], proj, env)
    ckpt = torch.load(proj / "models/checkpoint.pt", weights_only=False, map_location="cpu")
    return {"step": ckpt["step"], "train_seconds": time.perf_counter() - t0}
