"""Images/s of full SAGAN training steps (n_dis D updates + one G update) and achieved FLOP/s.

Runs the real Trainer on a synthetic prepared dataset (random uint8 images, 10 classes), so the
number includes the loader, EMA update and optimizer steps. FLOPs per step are counted once with
torch.utils.flop_counter (fp32, uncompiled; the same math is done in every mode).

  python benchmarks/train_throughput.py                      # CPU: fp32 at 32 and 64 px
  python benchmarks/train_throughput.py --device cuda --modes fp32 bf16 bf16+compile
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from sagan_core.config import Params
from sagan_core.trainer import Trainer


def synthetic_dataset(root: Path, res: int, n: int = 2048, channels: int = 3) -> Path:
    out = root / f"prepared{res}"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(out / "images.npy", rng.integers(0, 256, (n, channels, res, res), dtype=np.uint8))
    np.save(out / "labels.npy", rng.integers(0, 10, n).astype(np.int64))
    manifest = {
        "num_images": n,
        "num_classes": 10,
        "class_names": [str(i) for i in range(10)],
        "resolution": res,
        "channels": channels,
        "content_hash": "synthetic",
        "rejected": [],
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def make_trainer(prepared: Path, res: int, mode: str, device: str, ch: int, batch: int, tmp: Path) -> Trainer:
    params = Params.model_validate(
        {
            "data": {"resolution": res, "channels": 3, "prepared_dir": str(prepared)},
            "model": {"g_ch": ch, "d_ch": ch},
            "train": {
                "batch_size": batch,
                "device": device,
                "precision": "bf16" if "bf16" in mode else "fp32",
                "channels_last": "yes" if device == "cuda" else "no",
                "compile": "compile" in mode,
                "out_dir": str(tmp),
                "samples_dir": str(tmp),
                "metrics_file": str(tmp / "m.csv"),
            },
        }
    )
    return Trainer(params, progress=False)


def flops_per_step(t: Trainer) -> int:
    g, d, dg = t.G, t.D, t.D
    with FlopCounterMode(display=False) as counter:
        t.train_step(g, d, dg)
    return counter.get_total_flops()


def measure(t: Trainer, steps: int, warmup: int) -> float:
    mods = t._prepare_modules()
    sync = torch.cuda.synchronize if t.device.type == "cuda" else (lambda: None)
    for _ in range(warmup):  # includes compilation when compiling
        t.train_step(*mods)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        t.train_step(*mods)
    sync()
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--res", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--modes", nargs="+", default=None, help="fp32 | bf16 | fp32+compile | bf16+compile")
    ap.add_argument(
        "--ch", type=int, default=None, help="g_ch = d_ch (default: 64 on CUDA as in the paper, 32 on CPU)"
    )
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    cuda = args.device.startswith("cuda")
    modes = args.modes or (["fp32", "bf16", "bf16+compile"] if cuda else ["fp32"])
    ch = args.ch or (64 if cuda else 32)
    steps = args.steps or (50 if cuda else 3)
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    name = torch.cuda.get_device_name() if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {name}; torch {torch.__version__}; g_ch=d_ch={ch}; batch {args.batch}; {steps} timed steps"
    )
    print(f"{'res':>4} {'mode':>13} {'ms/step':>9} {'img/s':>9} {'GFLOP/step':>11} {'TFLOP/s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for res in args.res:
            prepared = synthetic_dataset(tmp, res)
            flops = flops_per_step(make_trainer(prepared, res, "fp32", args.device, ch, args.batch, tmp))
            for mode in modes:
                torch._dynamo.reset()
                t = make_trainer(prepared, res, mode, args.device, ch, args.batch, tmp)
                warmup = 5 if "compile" in mode else 2
                sec = measure(t, steps, warmup)
                print(
                    f"{res:>4} {mode:>13} {sec * 1e3:>9.1f} {args.batch / sec:>9.0f} {flops / 1e9:>11.1f} "
                    f"{flops / sec / 1e12:>8.3f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
