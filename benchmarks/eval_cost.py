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
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sagan_core.evaluate import inception as inc
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


def measure(params, steps: int, repeats: int = 1) -> tuple[float, float, float, float | None]:
    """(step seconds, evaluation seconds, reference seconds, evaluation seconds with the plain
    Inception path or None) of `params` on its device. repeats > 1: the evaluation is timed that many
    times with the fast path (in-training scoring's) and the plain one (`sagan evaluate`'s),
    alternating, and the medians are returned."""
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
    fast = scorer.net
    plain = inc.load_net(scorer.weights, params.eval.dims, False, trainer.device)
    times: dict[str, list[float]] = {"fast": [], "plain": []}
    for _ in range(repeats):
        for name, net in (("fast", fast), ("plain", plain)) if repeats > 1 else (("fast", fast),):
            scorer.net = net
            t0 = time.perf_counter()
            standing_stats.accumulate(
                g, params.train.standing_stats, params.train.batch_size, 0, trainer.device
            )
            scorer.score(g)
            sync()
            times[name].append(time.perf_counter() - t0)
            print(f"evaluation ({name} Inception path) {times[name][-1]:.1f} s", flush=True)
    plain_s = statistics.median(times["plain"]) if times["plain"] else None
    return step_s, statistics.median(times["fast"]), ref_s, plain_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=["demo", "gpu"], default="demo")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=30, help="timed training steps")
    ap.add_argument("--prepared", default="data/prepared", help="prepared dataset of the preset")
    ap.add_argument(
        "--repeats", type=int, default=1, help=">1: also time the plain Inception path, alternating"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sets = {} if args.preset == "demo" else dict(GPU)
        sets |= {"train.device": args.device, "eval.device": args.device, "data.prepared_dir": args.prepared}
        sets |= {"train.out_dir": f"{tmp}/models", "train.samples_dir": f"{tmp}/samples"}
        sets |= {"train.metrics_file": f"{tmp}/train.csv", "eval.cache_dir": f"{tmp}/cache"}
        params = load_params(Path("params.yaml"), [f"{k}={v}" for k, v in sets.items()])
        step_s, eval_s, ref_s, plain_s = measure(params, args.steps, args.repeats)
    cfg = params.train
    evals = cfg.steps // cfg.eval_every + (cfg.steps % cfg.eval_every != 0)
    train_s, evals_s = cfg.steps * step_s, evals * eval_s
    print(
        f"{args.preset}: step {step_s * 1000:.1f} ms, one evaluation ({cfg.eval_samples} samples) {eval_s:.1f} s, "
        f"reference once {ref_s:.1f} s; {cfg.steps} steps + {evals} evaluations: "
        f"{train_s / 60:.1f} + {evals_s / 60:.1f} min -> {evals_s / (train_s + evals_s):.1%} of wall time evaluating"
    )
    if plain_s is not None:
        share = evals * plain_s / (train_s + evals * plain_s)
        print(
            f"plain Inception path: one evaluation {plain_s:.1f} s -> {share:.1%}; fast/plain {eval_s / plain_s:.2f}"
        )


if __name__ == "__main__":
    main()
