"""How good are a checkpoint's class-conditional CIFAR-10 samples? Offline, with our own judge network.

A judge classifier is trained once (and cached) on the train split of
../shared/datasets/cifar10-jpg.tar.gz (see benchmarks/cifar_judge.py); its test-split accuracy is
reported. For each checkpoint, `--samples` class-balanced samples of its EMA generator are scored:
  - class accuracy: the fraction the judge classifies as the class that was asked for;
  - judge FD: the Fréchet distance between the judge's penultimate (256-d) features of the samples
    and of the 10,000 test-split images.
The ceiling is the same two figures for real images: the judge's test accuracy, and the FD of as many
held-out real train images (never seen by the judge) against the test split. Not part of the product:
a yardstick for the CIFAR-10 preset (BENCHMARKS.md). Without ../shared it says so and exits 2.

  python benchmarks/cifar_quality.py                               # the judge and the ceiling only
  python benchmarks/cifar_quality.py --checkpoint models/checkpoint.pt ckpts/step_*.pt --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cifar_judge beside this file
from cifar_judge import get_judge, holdout_per_class, judge_pass, load_data, split_holdout  # noqa: E402

from sagan_core.device import resolve_device  # noqa: E402
from sagan_core.evaluate.metrics import Stats, frechet_distance  # noqa: E402
from sagan_core.evaluate.protocol import sample_uint8  # noqa: E402
from sagan_core.model.checkpoint import load_generator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"


def stats(features: np.ndarray) -> Stats:
    return Stats(features.mean(axis=0), np.cov(features, rowvar=False))


def balanced_holdout(y: np.ndarray, n: int) -> np.ndarray:
    """n held-out train images, class-balanced (class c at positions c, c+K, ...: like the samples)."""
    _, hold = split_holdout(y)
    k = int(y.max()) + 1
    per_class = [hold[y[hold] == c] for c in range(k)]
    return np.array([per_class[i % k][i // k] for i in range(n)])


def ceiling(net, data: dict, ref: Stats, n: int, device: torch.device) -> dict:
    """The two figures for real images: test accuracy, and FD(held-out real train images, test)."""
    idx = balanced_holdout(data["train_y"], n)
    pred, feats = judge_pass(net, (data["train_x"][idx[i : i + 500]] for i in range(0, n, 500)), device)
    test_pred, _ = judge_pass(
        net, (data["test_x"][i : i + 500] for i in range(0, len(data["test_x"]), 500)), device
    )
    return {
        "class_accuracy": float((test_pred == data["test_y"]).mean()),
        "holdout_accuracy": float((pred == data["train_y"][idx]).mean()),
        "judge_fd": frechet_distance(stats(feats), ref),
        "samples": n,
    }


def score_checkpoint(path: Path, net, data: dict, ref: Stats, n: int, device: torch.device) -> dict:
    """Class accuracy and judge FD of n class-balanced samples of the checkpoint's EMA generator."""
    g, meta = load_generator(path, use_ema=True, device=device)
    names = list(meta.get("class_names") or [])
    if g.spec.num_classes != len(data["classes"]) or (names and names != data["classes"]):
        raise SystemExit(
            f"{path}: its classes {names or g.spec.num_classes} are not CIFAR-10's {data['classes']}"
        )
    t0 = time.time()
    pred, feats = judge_pass(net, sample_uint8(g, n, 250, seed=0, device=device), device)
    asked = np.arange(n) % g.spec.num_classes  # sample_uint8's class-balanced labels
    return {
        "checkpoint": str(path),
        "step": int(meta.get("step", -1)),
        "class_accuracy": float((pred == asked).mean()),
        "judge_fd": frechet_distance(stats(feats), ref),
        "samples": n,
        "seconds": round(time.time() - t0, 1),
    }


def run(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device, "--device")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_data(args.archive, args.cache_dir)
    held_out = holdout_per_class(data["train_y"]) * len(data["classes"])
    if args.samples > held_out:
        raise SystemExit(f"cifar_quality: --samples at most {held_out} (the held-out real images)")
    net, record = get_judge(
        data, args.cache_dir, args.epochs, device, log=lambda s: print(s, file=sys.stderr)
    )
    _, ref_feats = judge_pass(
        net, (data["test_x"][i : i + 500] for i in range(0, len(data["test_x"]), 500)), device
    )
    ref = stats(ref_feats)
    out = {
        "archive": str(args.archive),
        "judge": record,
        "ceiling": ceiling(net, data, ref, args.samples, device),
    }
    out["checkpoints"] = [score_checkpoint(p, net, data, ref, args.samples, device) for p in args.checkpoint]
    return out


def table(result: dict) -> str:
    j = result["judge"]
    lines = [
        f"judge: {j['recipe']}, {j['epochs']} epochs on {j['train_images']} train images, "
        f"test accuracy {j['test_accuracy']:.4f}",
        f"{'what':<40} {'step':>7} {'class acc':>10} {'judge FD':>10} {'samples':>8}",
    ]
    c = result["ceiling"]
    lines.append(
        f"{'real images (ceiling)':<40} {'':>7} {c['class_accuracy']:>10.4f} {c['judge_fd']:>10.3f} {c['samples']:>8}"
    )
    for r in result["checkpoints"]:
        name = Path(r["checkpoint"]).name
        lines.append(
            f"{name:<40} {r['step']:>7} {r['class_accuracy']:>10.4f} {r['judge_fd']:>10.3f} {r['samples']:>8}"
        )
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, nargs="*", default=[], help="checkpoints to score")
    ap.add_argument("--archive", type=Path, default=ARCHIVE, help="CIFAR-10 JPEG archive (train/, test/)")
    ap.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "sagan" / "cifar_quality")
    ap.add_argument("--samples", type=int, default=5000, help="samples per checkpoint (and real images)")
    ap.add_argument("--epochs", type=int, default=6, help="judge training epochs (first run only)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.archive.is_file():
        print(
            f"cifar_quality: {args.archive} not found: this benchmark needs the CIFAR-10 JPEG archive from "
            "../shared (the developers' shared folder; see its README) or --archive; nothing was measured.",
            file=sys.stderr,
        )
        return 2
    result = run(args)
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
