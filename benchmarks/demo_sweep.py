"""Sweep candidate demo presets: train each on the demo digits, score with demo_quality's classifier.

Used to choose params.yaml's CPU demo preset. Runs fp32 (the CPU numerics) on whatever device is
given; a GPU makes the sweep fast, and the chosen preset is then confirmed on CPU.

  python benchmarks/demo_sweep.py --device cuda --out /tmp/sweep
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from demo_quality import sample_accuracy, train_classifier  # noqa: E402

from sagan_core.config import Params  # noqa: E402
from sagan_core.prepare import prepare  # noqa: E402
from sagan_core.trainer import train  # noqa: E402

CANDIDATES = {
    "ch8-b64-600": {"model": {"g_ch": 8, "d_ch": 8}, "train": {"steps": 600, "batch_size": 64}},
    "ch8-b64-600-ema.99": {
        "model": {"g_ch": 8, "d_ch": 8},
        "train": {"steps": 600, "batch_size": 64, "ema_decay": 0.99},
    },
    "ch8-b32-1200-ema.99": {
        "model": {"g_ch": 8, "d_ch": 8},
        "train": {"steps": 1200, "batch_size": 32, "ema_decay": 0.99},
    },
    "ch8-b64-600-lr2x": {
        "model": {"g_ch": 8, "d_ch": 8},
        "train": {"steps": 600, "batch_size": 64, "ema_decay": 0.99, "lr_g": 2e-4, "lr_d": 8e-4},
    },
    "ch8-b32-1200-lr2x": {
        "model": {"g_ch": 8, "d_ch": 8},
        "train": {"steps": 1200, "batch_size": 32, "ema_decay": 0.99, "lr_g": 2e-4, "lr_d": 8e-4},
    },
    "ch6-b64-800-ema.99": {
        "model": {"g_ch": 6, "d_ch": 6},
        "train": {"steps": 800, "batch_size": 64, "ema_decay": 0.99},
    },
    "ch8-b64-1000-ema.99": {
        "model": {"g_ch": 8, "d_ch": 8},
        "train": {"steps": 1000, "batch_size": 64, "ema_decay": 0.99},
    },
    "ch16-b64-600-ema.99": {
        "model": {"g_ch": 16, "d_ch": 16},
        "train": {"steps": 600, "batch_size": 64, "ema_decay": 0.99},
    },
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("/tmp/sagan-sweep"))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    prepared = args.out / "data/prepared"
    prepare(Params.model_validate({"data": {"prepared_dir": str(prepared)}}).data, progress=False)
    net, acc = train_classifier(prepared, epochs=4, device=torch.device(args.device))
    print(f"classifier accuracy on held-out real digits: {acc:.1%}", flush=True)
    results = {}
    for name, over in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        for seed in args.seeds:
            run = args.out / f"{name}-s{seed}"
            raw = json.loads(json.dumps(over))
            raw["data"] = {"prepared_dir": str(prepared)}
            raw["train"] |= {
                "device": args.device,
                "precision": "fp32",
                "channels_last": "no",
                "seed": seed,
                "out_dir": str(run / "models"),
                "samples_dir": str(run / "samples"),
                "metrics_file": str(run / "train.csv"),
                "sample_every": 10_000,
                "log_every": 100,
                "checkpoint_every": 10_000,
            }
            t0 = time.perf_counter()
            train(Params.model_validate(raw), progress=False)
            sec = time.perf_counter() - t0
            frac, per, _ = sample_accuracy(
                net, run / "models/checkpoint.pt", 100, torch.device(args.device), run / "grid.png"
            )
            results[f"{name}-s{seed}"] = frac
            print(
                f"{name:>22} seed {seed}: {frac:.1%} recognised  (min class {min(per):.0%}; {sec:.0f} s)",
                flush=True,
            )
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
