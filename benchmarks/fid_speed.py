"""FID speed: pytorch-fid over PNG files vs `sagan evaluate` (cold and warm statistics cache).

On one checkpoint and one sample count, side by side:
  (a) the usual workflow: write the samples as PNG files, then `python -m pytorch_fid samples/ real/`
      against the prepared dataset's reference images exported as PNG (the export is timed apart:
      it is a one-time cost, so (a) excludes it, which favours (a));
  (b) `sagan evaluate` with an empty statistics cache (reference pass + samples pass, plus IS/KID);
  (c) `sagan evaluate` with the cache warm (samples pass only);
  (d) `sagan fid samples/ real/` on the same PNG folders as (a)'s `python -m pytorch_fid`, the two
      commands alternated `--repeats` times (median wall time of each).
Targets: (c) >= 2x faster than (a), (b) no slower than (a), FIDs within 1e-3; (d) >= 1.3x faster
than `python -m pytorch_fid` with its FID within 1e-5 relative (issue 24).

Sample counts: FID's covariance is singular with fewer samples than feature dimensions (2048).
There pytorch-fid's scipy `sqrtm` of the singular product costs ~25 s on 2 cores, while sagan takes
the trace from the images' cross-Gram matrix (exact, ~0.03 s, sagan_core/evaluate/frechet.py); above that both use a
well-conditioned path. Real protocols (10k, 50k) have more samples than dims.

Also reports the Inception pass in images/s and as a fraction of this machine's measured fp32
matmul FLOP/s (TF32 off, as during evaluation).

Weights: pytorch-fid's file from the torch hub cache; if it is absent, a deterministic STAND-IN
(tests/standin_inception.py) is written into a private TORCH_HOME and the output says so: timings
are then still meaningful (same architecture), FID values are not.

  python benchmarks/fid_speed.py --device cpu --num-samples 2100 --reference-size 3000   # ~40 min, 2 cores
  python benchmarks/fid_speed.py --device cpu --num-samples 300 --reference-size 300 --folders-only --repeats 2
  python benchmarks/fid_speed.py --device cuda --num-samples 10000 --reference-size 10000 --batch-size 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from sagan_core.config import Params  # noqa: E402
from sagan_core.data.dataset import open_prepared  # noqa: E402
from sagan_core.evaluate import inception as inc  # noqa: E402
from sagan_core.evaluate import protocol as E  # noqa: E402
from sagan_core.model import checkpoint as ckpt_io  # noqa: E402
from sagan_core.model.networks import build_models, model_spec  # noqa: E402


def matmul_flops(device: torch.device) -> float:
    """Sustained fp32 matmul FLOP/s (TF32 off)."""
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    with inc.exact_fp32():
        for _ in range(2):
            a @ b
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 2.0:
            a @ b
            reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    return 2 * n**3 * reps / dt


def inception_flops_per_image(weights: Path) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    net = inc.InceptionFeatures(weights, 2048, logits=True)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        net(torch.rand(1, 3, 32, 32))
    return float(fc.get_total_flops())


def to_pil(chw: np.ndarray) -> Image.Image:
    """uint8 C x H x W -> a grayscale or RGB PIL image (what a PNG of it holds)."""
    return Image.fromarray(chw[0] if chw.shape[0] == 1 else chw.transpose(1, 2, 0))


def run(cmd: list[str], cwd: Path, env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return dt, r


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--num-samples", type=int, default=2100)
    ap.add_argument("--reference-size", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--dims", type=int, default=2048)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary directory")
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: an untrained demo-size G")
    ap.add_argument("--repeats", type=int, default=1, help="alternations of pytorch_fid and `sagan fid`")
    ap.add_argument("--folders-only", action="store_true", help="(a) and (d) only: skip `sagan evaluate`")
    return ap.parse_args()


def ensure_weights(work: Path, env: dict) -> bool:
    """True when the stand-in weights had to be used (pytorch-fid's file is absent)."""
    if inc.default_weights_path().is_file():
        return False
    from standin_inception import write_standin

    env["TORCH_HOME"] = os.environ["TORCH_HOME"] = str(work / "torch_home")
    if not inc.default_weights_path().is_file():
        write_standin(work / "torch_home")
    print("*** pytorch-fid's Inception weights are absent: using the deterministic STAND-IN weights.")
    print("*** Timings are representative (same network); FID values mean nothing about quality.")
    return True


def ensure_inputs(args, work: Path, env: dict):
    """The prepared demo data and the checkpoint to evaluate (an untrained G unless given)."""
    params = Params.model_validate({"data": {"prepared_dir": str(work / "data/prepared")}})
    if not (work / "data/prepared/manifest.json").exists():
        run([sys.executable, "-m", "pipelines.cli", "prepare", "-q"], work, env)
    data = open_prepared(work / "data/prepared")
    ckpt = args.checkpoint or work / "models/checkpoint.pt"
    if args.checkpoint is None and not ckpt.exists():
        torch.manual_seed(0)
        spec = model_spec(params, data.num_classes)
        g, d = build_models(spec)
        ckpt_io.save_atomic(
            {"step": 0, "spec": spec.to_dict(), "generator": g.state_dict(), "generator_ema": g.state_dict()}
            | {"discriminator": d.state_dict()},
            ckpt,
        )
    return data, ckpt


def usual_workflow(args, work: Path, env: dict, data, ckpt: Path) -> dict:
    """(a) PNG files + `python -m pytorch_fid`. The reference export is timed apart (one-time cost)."""
    device = torch.device(args.device)
    t0 = time.perf_counter()
    real = work / "real"
    shutil.rmtree(real, ignore_errors=True)
    real.mkdir()
    for i in E.reference_indices(len(data), args.reference_size):
        to_pil(np.asarray(data.images[i])).save(real / f"{i:06d}.png")
    export_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    samples = work / "samples_png"
    shutil.rmtree(samples, ignore_errors=True)
    samples.mkdir()
    g, _ = ckpt_io.load_generator(ckpt, True, device)
    k = 0
    for u8 in E.sample_uint8(g, args.num_samples, args.batch_size, 0, device):
        for im in u8.cpu().numpy():
            to_pil(im).save(samples / f"{k:06d}.png")
            k += 1
    png_s = time.perf_counter() - t0
    dims_flags = ["--dims", str(args.dims), "--batch-size", str(args.batch_size), "--device", args.device]
    folders = [str(samples), str(real), *dims_flags]
    times: dict[str, list[float]] = {"pytorch_fid": [], "sagan_fid": []}
    fids: dict[str, float] = {}
    for _ in range(args.repeats):  # (a) and (d) alternated: machine load hits both alike
        for name, cmd in [
            ("pytorch_fid", ["-m", "pytorch_fid"]),
            ("sagan_fid", ["-m", "pipelines.cli", "fid", "-q"]),
        ]:
            dt, r = run([sys.executable, *cmd, *folders], work, env)
            times[name].append(dt)
            fids[name] = float(re.search(r"FID:\s+(\S+)", r.stdout).group(1))
    cli_s = statistics.median(times["pytorch_fid"])
    return {
        "fid": fids["pytorch_fid"],
        "seconds": png_s + cli_s,
        "png_s": png_s,
        "export_s": export_s,
        "cli": {k: statistics.median(v) for k, v in times.items()},
        "cli_runs": times,
        "sagan_fid": fids["sagan_fid"],
    }


def report_folders(a: dict) -> bool:
    """(d) against (a)'s pytorch_fid command on the same folders."""
    t_ref, t_ours = a["cli"]["pytorch_fid"], a["cli"]["sagan_fid"]
    runs = ", ".join(f"{k}: {' / '.join(f'{t:.1f}' for t in v)} s" for k, v in a["cli_runs"].items())
    print(f"| (d) `sagan fid samples/ real/` vs `python -m pytorch_fid samples/ real/` | {runs} |")
    diff = abs(a["sagan_fid"] - a["fid"])
    print(
        f"(a)/(d), commands alone: {t_ref / t_ours:.2f}x (target >= 1.3); "
        f"FID pytorch_fid {a['fid']:.6f}, sagan fid {a['sagan_fid']:.6f}, relative difference {diff / abs(a['fid']):.1e} (target <= 1e-5)"
    )
    return t_ref >= 1.3 * t_ours and diff <= 1e-5 * abs(a["fid"])


def sagan_evaluate(args, work: Path, env: dict, ckpt: Path) -> tuple[float, dict, float, dict]:
    """(b) `sagan evaluate` with a cold statistics cache, then (c) with a warm one."""
    sets = {
        "eval.num_samples": args.num_samples,
        "eval.reference_size": args.reference_size,
        "eval.batch_size": args.batch_size,
        "eval.dims": args.dims,
        "eval.device": args.device,
        "eval.seed": 0,
        "eval.cache_dir": str(work / "cache"),
        "eval.metrics_file": str(work / "eval.json"),
    }
    cmd = [sys.executable, "-m", "pipelines.cli", "evaluate", "-q", "--checkpoint", str(ckpt)]
    for key, v in sets.items():
        cmd += ["--set", f"{key}={v}"]
    shutil.rmtree(work / "cache", ignore_errors=True)
    time_b, _ = run(cmd, work, env)
    eval_b = json.loads((work / "eval.record.json").read_text())
    time_c, _ = run(cmd, work, env)
    eval_c = json.loads((work / "eval.record.json").read_text())
    assert eval_b["stats_cache"] == "miss" and eval_c["stats_cache"] == "hit"
    return time_b, eval_b, time_c, eval_c


def report(args, standin: bool, weights: Path, a: dict, b: tuple[float, dict], c: tuple[float, dict]) -> None:
    (time_b, eval_b), (time_c, eval_c) = b, c
    device = torch.device(args.device)
    ips = eval_c["timing"]["samples_images_per_s"]
    peak = matmul_flops(device)
    per_img = inception_flops_per_image(weights)
    fids = [a["fid"], eval_b["fid"], eval_c["fid"]]
    spread = max(fids) - min(fids)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"\nmachine: {dev_name}, {os.cpu_count()} CPU cores, torch {torch.__version__}")
    print(f"weights: {'STAND-IN' if standin else weights.name} (sha256 {eval_b['weights_sha256'][:12]})")
    print(
        f"samples {args.num_samples}, reference {eval_b['reference_size']}, dims {args.dims}, batch {args.batch_size}, device {args.device}"
    )
    print("\n| run | wall s | FID |\n| --- | --- | --- |")
    print(
        f"| (a) PNG + `python -m pytorch_fid` | {a['seconds']:.1f} (PNG write {a['png_s']:.1f}) | {a['fid']:.6f} |"
    )
    print(f"| (b) `sagan evaluate`, cold cache | {time_b:.1f} | {eval_b['fid']:.6f} |")
    print(f"| (c) `sagan evaluate`, warm cache | {time_c:.1f} | {eval_c['fid']:.6f} |")
    print(f"\nreference export as PNG (one-time, not in (a)): {a['export_s']:.1f} s")
    time_a = a["seconds"]
    print(
        f"speed-up (a)/(c): {time_a / time_c:.2f}x (target >= 2); (a)/(b): {time_a / time_b:.2f}x (target >= 1)"
    )
    print(
        f"FID spread: {spread:.2e} (target < 1e-3); sagan's Fréchet trace: {eval_c['fid_method']}"
        f" ({eval_c['timing']['frechet_seconds']:.1f} s)"
    )
    print(
        f"Inception pass: {ips:.1f} images/s x {per_img / 1e9:.2f} GFLOP/image = {ips * per_img / 1e9:.1f} GFLOP/s"
        f" = {ips * per_img / peak:.1%} of measured fp32 matmul {peak / 1e9:.1f} GFLOP/s"
    )
    ok = time_a / time_c >= 2 and time_b <= time_a and spread < 1e-3
    ok = report_folders(a) and ok
    print("targets met" if ok else "TARGETS NOT MET")


def main() -> None:
    args = parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fid_speed_"))
    work.mkdir(parents=True, exist_ok=True)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    standin = ensure_weights(work, env)
    weights = inc.resolve_weights()
    data, ckpt = ensure_inputs(args, work, env)
    a = usual_workflow(args, work, env, data, ckpt)
    if args.folders_only:
        print(
            f"\nsamples {args.num_samples}, reference {args.reference_size}, dims {args.dims}, device {args.device}"
        )
        print("targets met" if report_folders(a) else "TARGETS NOT MET")
        return
    time_b, eval_b, time_c, eval_c = sagan_evaluate(args, work, env, ckpt)
    report(args, standin, weights, a, (time_b, eval_b), (time_c, eval_c))


if __name__ == "__main__":
    main()
