"""Training-step throughput: the current step against the step before issue 13, in one process.

Each contender is the real Trainer (loader, n_dis D updates on real + fake, one G update, Adam) on
a synthetic prepared dataset (random uint8 images, 10 classes); the contenders' steps alternate
(A B C A B C ...), so machine load hits all alike, and the median step time is reported:

- `before`: the step before issue 13 (benchmarks/legacy_step.py: old layer forwards, default Adam,
  NCHW, fp32 as `precision: auto` chose on CPU);
- `fp32`: the current step in fp32 (channels_last, fused Adam, the leaner layers);
- `bf16`: the current step with bf16 autocast (what `precision: auto` picks on a CPU with bf16 units);
- `+compile` variants (`--compile`): torch.compile'd G and D; compile time is reported apart.

FLOPs per step are counted per contender with torch.utils.flop_counter (the old step's shortcut
convs run at the upsampled size, so it counts more). The machine's matmul rate is measured in the
same alternation (a 1024^3 fp32 and a bf16 matmul are two more contenders, same thread count), and
each contender's achieved FLOP/s is given as a fraction of the median rate of its precision.

  python benchmarks/train_throughput.py                        # CPU, 1 thread: ch 8/batch 32, ch 32/batch 64
  python benchmarks/train_throughput.py --compile --configs 8x32
  python benchmarks/train_throughput.py --device cuda --threads 0 --configs 64x64 --modes fp32 bf16
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from legacy_step import make_legacy  # noqa: E402

from sagan_core.config import Params  # noqa: E402
from sagan_core.train.trainer import Trainer  # noqa: E402


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
    before = mode.startswith("before")
    train = {
        "batch_size": batch,
        "device": device,
        "precision": "bf16" if "bf16" in mode else "fp32",
        "channels_last": "no" if before and device == "cpu" else "auto",
        "compile": "compile" in mode,
        "out_dir": str(tmp),
        "samples_dir": str(tmp),
        "metrics_file": str(tmp / "m.csv"),
    }
    data = {"resolution": res, "channels": 3, "prepared_dir": str(prepared)}
    params = Params.model_validate({"data": data, "model": {"g_ch": ch, "d_ch": ch}, "train": train})
    torch.manual_seed(0)
    t = Trainer(params, progress=False)
    if before:
        make_legacy(t)
    return t


def step_flops(t: Trainer, mods) -> int:
    with FlopCounterMode(display=False) as counter:
        t.train_step(*mods)
    return counter.get_total_flops()


class Matmul:
    """A square matmul as a contender: its rate is timed in the same alternation as the steps."""

    def __init__(self, device: torch.device, dtype: torch.dtype, n: int = 1024, reps: int = 4):
        self.a, self.b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        self.flops, self.reps = 2 * n**3 * reps, reps
        self.times: list[float] = []
        self()

    def __call__(self) -> None:
        for _ in range(self.reps):
            self.a @ self.b

    def rate(self) -> float:
        return self.flops / statistics.median(self.times)


def run_config(args, tmp: Path, ch: int, batch: int) -> list[dict]:
    prepared = synthetic_dataset(tmp, args.res)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    modes = list(args.modes) + ([f"{m}+compile" for m in args.modes if m != "before"] if args.compile else [])
    contenders = {}
    for mode in modes:
        t = make_trainer(prepared, args.res, mode, args.device, ch, batch, tmp)
        mods = t._prepare_modules()
        t0 = time.perf_counter()
        for _ in range(args.warmup):  # includes compilation when compiling
            t.train_step(*mods)
        sync()
        warm = time.perf_counter() - t0
        flops = step_flops(t, (t.state.G, t.state.D, t.state.D))  # eager: FlopCounterMode sees every op
        contenders[mode] = {"trainer": t, "mods": mods, "flops": flops, "warmup_s": warm, "times": []}
    device = torch.device(args.device)
    mm = {"fp32": Matmul(device, torch.float32), "bf16": Matmul(device, torch.bfloat16)}
    runs = [(c["times"], lambda c=c: c["trainer"].train_step(*c["mods"])) for c in contenders.values()]
    runs += [(m.times, m) for m in mm.values()]
    for _ in range(args.steps):  # alternate contenders step by step
        for times, run in runs:
            sync()
            t0 = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t0)
    rates = {k: m.rate() for k, m in mm.items()}
    print(
        f"matmul 1024^3 in the same alternation: fp32 {rates['fp32'] / 1e9:.1f} GFLOP/s, "
        f"bf16 {rates['bf16'] / 1e9:.1f} GFLOP/s",
        flush=True,
    )
    rows, base = [], None
    for mode, c in contenders.items():
        sec = statistics.median(c["times"])
        base = base or sec
        rate = rates["bf16" if "bf16" in mode else "fp32"]
        row = {
            "ch": ch,
            "batch": batch,
            "mode": mode,
            "ms_per_step": sec * 1e3,
            "img_per_s": batch / sec,
            "gflop_per_step": c["flops"] / 1e9,
            "gflop_per_s": c["flops"] / sec / 1e9,
            "of_matmul_rate": c["flops"] / sec / rate,
            "speedup_vs_first": base / sec,
            "warmup_s": c["warmup_s"],
            "matmul_gflop_per_s": rate / 1e9,
        }
        rows.append(row)
        print(
            f"ch {ch:>3} batch {batch:>3} {mode:>14}: {row['ms_per_step']:8.1f} ms/step {row['img_per_s']:7.1f} img/s "
            f"{row['gflop_per_step']:7.2f} GFLOP/step {row['gflop_per_s']:6.1f} GFLOP/s "
            f"({row['of_matmul_rate']:4.0%} of {'bf16' if 'bf16' in mode else 'fp32'} matmul) "
            f"x{row['speedup_vs_first']:.2f} vs {modes[0]}  (warm-up {args.warmup} steps: {c['warmup_s']:.1f} s)",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--configs", nargs="+", default=["8x32", "32x64"], help="CHxBATCH (g_ch = d_ch)")
    ap.add_argument("--modes", nargs="+", default=["before", "fp32", "bf16"], help="first = the ratio's base")
    ap.add_argument("--compile", action="store_true", help="add torch.compile'd variants of the current step")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per contender")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else _cpu_name()
    print(
        f"{name}; torch {torch.__version__}; {torch.get_num_threads()} thread(s); res {args.res}; "
        f"median of {args.steps} alternating steps",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for cfg in args.configs:
            ch, batch = (int(v) for v in cfg.split("x"))
            rows += run_config(args, Path(tmp), ch, batch)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
