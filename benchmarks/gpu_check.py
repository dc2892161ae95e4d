"""One-command GPU acceptance: proves sagan's GPU paths and records the figures, bounded to ~8 minutes
on one H100. Writes benchmarks/results/gpu_check.json and prints a table. Not part of the product.

Items (each failure is reported as that item's result; the script itself does not crash):
  cuda_tests      tests/test_cuda.py under pytest
  matmul_rate     dense bf16 / fp32 matmul TFLOP/s: the ceiling the training FLOP/s are compared with
  throughput      training img/s at 32 px and 128 px, paper width (64), fp32 / bf16 / bf16+compile:
                  achieved TFLOP/s (PyTorch's FLOP counter), ratio to the matmul rate, peak memory
  ddp_two_ranks   `sagan train` with 2 DDP ranks on the one GPU
  cifar_run       the CIFAR-10 preset (pipelines/project/presets/cifar10.yaml) for the time left, scored by
                  benchmarks/cifar_quality.py (needs ../shared/datasets/cifar10-jpg.tar.gz)
  fid_speed       `sagan evaluate` vs PNG files + `python -m pytorch_fid`, 10k samples, |ΔFID| < 1e-3

  python benchmarks/gpu_check.py             # on a GPU machine
  python benchmarks/gpu_check.py --dry-run   # every item at toy size on CPU (< 2 min; run by the tests)
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the item modules beside this file
import gpu_cifar_items  # noqa: E402
import gpu_items  # noqa: E402

FULL = {"width": 64, "batch32": 64, "batch128": 64, "warmup": 3, "steps": 10, "matmul_n": 8192,
        "matmul_reps": 20, "ddp_steps": 20, "cifar_steps": 500, "quality_samples": 5000,
        "judge_epochs": 6, "fid_samples": 10000, "fid_dims": 2048}  # fmt: skip
DRY = {"width": 4, "batch32": 4, "batch128": 2, "warmup": 1, "steps": 2, "matmul_n": 128,
       "matmul_reps": 2, "ddp_steps": 2, "cifar_steps": 2, "quality_samples": 20,
       "judge_epochs": 1, "fid_samples": 40, "fid_dims": 64}  # fmt: skip
ITEMS = [
    ("cuda_tests", gpu_items.cuda_tests),
    ("matmul_rate", gpu_items.matmul_rate),
    ("throughput", gpu_items.throughput),
    ("ddp_two_ranks", gpu_items.ddp_two_ranks),
    ("cifar_run", gpu_cifar_items.cifar_run),
    ("fid_speed", gpu_cifar_items.fid_speed),
]


def run_items(ctx: SimpleNamespace, only: list[str] | None) -> dict:
    results = {}
    for name, fn in ITEMS:
        if only and name not in only:
            continue
        t0 = time.perf_counter()
        try:
            figures, status = fn(ctx), "ok"
        except Exception as e:  # an item's failure is its result; the others still run
            figures, status = {"error": f"{type(e).__name__}: {e}"[:500]}, "failed"
            if ctx.verbose:
                traceback.print_exc()
        results[name] = {"status": status, "seconds": round(time.perf_counter() - t0, 1), **figures}
        print(f"[gpu_check] {name}: {status} ({results[name]['seconds']} s)", file=sys.stderr, flush=True)
    return results


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def table(report: dict) -> str:
    lines = [f"gpu_check on {report['device_name']} ({'dry run' if report['dry_run'] else 'full'})"]
    for name, r in report["items"].items():
        flat = {k: v for k, v in r.items() if k not in ("status", "seconds") and not isinstance(v, dict)}
        lines.append(
            f"{name:<15} {r['status']:<7} {r['seconds']:>7.1f} s  "
            + ", ".join(f"{k}={_fmt(v)}" for k, v in flat.items())
        )
    tp = report["items"].get("throughput", {})
    rows = {k: v for k, v in tp.items() if isinstance(v, dict)}
    if rows:
        lines.append(f"{'config':<18} {'img/s':>9} {'TFLOP/s':>9} {'vs matmul':>9} {'peak GiB':>9}")
        for k, v in rows.items():
            if "error" in v:
                lines.append(f"{k:<18} {v['error']}")
                continue
            cols = (v["img_per_s"], v["tflops"], v["ratio_to_matmul"], v["peak_gib"])
            lines.append(f"{k:<18} " + " ".join(f"{_fmt(c):>9}" for c in cols))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="every item at toy size on CPU")
    ap.add_argument("--budget-s", type=float, default=480, help="time budget (the CIFAR run gets the rest)")
    ap.add_argument("--only", nargs="*", help="run only these items")
    ap.add_argument(
        "--out", type=Path, help="[default: results/gpu_check.json; dry run: gpu_check_dry_run.json]"
    )
    ap.add_argument("--verbose", action="store_true", help="print failing items' tracebacks")
    args = ap.parse_args(argv)
    args.out = (
        args.out or Path(__file__).parent / "results" / f"gpu_check{'_dry_run' if args.dry_run else ''}.json"
    )
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; use --dry-run for the CPU rehearsal", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda:0")
    name = (
        torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or 'unknown'})"
    )
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work:
        ctx = SimpleNamespace(device=device, dry=args.dry_run, size=DRY if args.dry_run else FULL, work=Path(work),
                              deadline=time.time() + args.budget_s, matmul=None, throughput=None, verbose=args.verbose)  # fmt: skip
        items = run_items(ctx, args.only)
    report = {"device_name": name, "dry_run": args.dry_run, "torch": torch.__version__, "items": items}
    report["date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    return 0 if all(r["status"] == "ok" for r in items.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
