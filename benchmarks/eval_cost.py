"""The cost of in-training evaluation (train.eval_every): the fraction of a run's wall time spent
scoring the EMA generator (standing statistics + samples + Inception + KID/FID), for a preset.

Measures the mean seconds of a training step (the real Trainer, after warm-up) and of one in-training
evaluation (sagan_core.periodic_eval.Scorer, after the one-off reference pass, which is timed on its
own and reused by `sagan evaluate`), then projects the preset's whole run:
  fraction = evals * eval_s / (steps * step_s + evals * eval_s),  evals = steps // eval_every (+ the end)

  python benchmarks/eval_cost.py                         # the demo preset (params.yaml) on this machine
  python benchmarks/eval_cost.py --preset gpu --device cuda   # 128 px, ch 64, batch 256, 10k samples
Inception's cost does not depend on its weights: TORCH_HOME may hold the tests' stand-in weights.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sagan_core.params_file import load_params
from sagan_core.train import standing_stats
from sagan_core.train.periodic_eval import Scorer
from sagan_core.train.trainer import Trainer

GPU = {  # a long GPU run: 128 px SAGAN, paper widths, 100k steps, eval every 5k on 10k samples
    "data.resolution": 128,
    "data.channels": 3,
    "model.g_ch": 64,
    "model.d_ch": 64,
    "train.batch_size": 256,
    "train.steps": 100000,
    "train.eval_every": 5000,
    "train.eval_samples": 10000,
    "eval.reference_size": 10000,
    "eval.batch_size": 500,
}


def measure(params, steps: int) -> tuple[float, float, float]:
    """(step seconds, evaluation seconds, reference seconds) of `params` on its device."""
    trainer = Trainer(params, progress=False)
    g_run, d_run, d_frozen = trainer._prepare_modules()
    for _ in range(3):  # warm-up (allocator, autotuning)
        trainer.train_step(g_run, d_run, d_frozen)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step(g_run, d_run, d_frozen)
    sync()
    step_s = (time.perf_counter() - t0) / steps
    print(f"step {step_s * 1000:.1f} ms", flush=True)  # partial results survive a timeout
    scorer = Scorer(params, params.train.eval_samples, trainer.device)
    t0 = time.perf_counter()
    scorer._load()  # Inception + the reference statistics: once per process (cached on disk after)
    ref_s = time.perf_counter() - t0
    print(f"reference (once) {ref_s:.1f} s", flush=True)
    g = trainer.state.G_ema.module
    t0 = time.perf_counter()
    standing_stats.accumulate(g, params.train.standing_stats, params.train.batch_size, 0, trainer.device)
    scorer.score(g)
    sync()
    return step_s, time.perf_counter() - t0, ref_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["demo", "gpu"], default="demo")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps")
    ap.add_argument("--prepared", default="data/prepared", help="prepared dataset of the preset")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sets = {} if args.preset == "demo" else dict(GPU)
        sets |= {"train.device": args.device, "eval.device": args.device, "data.prepared_dir": args.prepared}
        sets |= {"train.out_dir": f"{tmp}/models", "train.samples_dir": f"{tmp}/samples"}
        sets |= {"train.metrics_file": f"{tmp}/train.csv", "eval.cache_dir": f"{tmp}/cache"}
        params = load_params(Path("params.yaml"), [f"{k}={v}" for k, v in sets.items()])
        step_s, eval_s, ref_s = measure(params, args.steps)
    cfg = params.train
    evals = cfg.steps // cfg.eval_every + (cfg.steps % cfg.eval_every != 0)
    train_s, evals_s = cfg.steps * step_s, evals * eval_s
    print(
        f"{args.preset}: step {step_s * 1000:.1f} ms, one evaluation ({cfg.eval_samples} samples) {eval_s:.1f} s, "
        f"reference once {ref_s:.1f} s; {cfg.steps} steps + {evals} evaluations: "
        f"{train_s / 60:.1f} + {evals_s / 60:.1f} min -> {evals_s / (train_s + evals_s):.1%} of wall time evaluating"
    )


if __name__ == "__main__":
    main()
