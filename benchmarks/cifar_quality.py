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

Judge-space precision, recall, density and coverage (k=5, sagan_core/evaluate/prdc.py) are reported
next to the FD. The small-data grid (issue 24: VARIANTS x --seeds x --fractions): `--plan DIR` writes
each fraction's seeded subset of the prepared data and prints one `sagan train` command per run, each
into DIR/<variant>-s<seed>-f<fraction>/; scoring those checkpoints (`--checkpoint DIR/*/checkpoint.pt`)
adds a mean ± standard deviation table over seeds per (variant, fraction). benchmarks/cifar_grid.py runs the
whole grid (prepare, train, score, tabulate) in one resumable command.

  python benchmarks/cifar_quality.py --plan /work/grid --prepared /work/cifar-run/data/prepared
  python benchmarks/cifar_quality.py --checkpoint /work/grid/*/models/checkpoint.pt --json grid.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cifar_judge beside this file
from cifar_judge import get_judge, holdout_per_class, judge_pass, load_data, split_holdout  # noqa: E402

from sagan_core.device import resolve_device  # noqa: E402
from sagan_core.evaluate.frechet import frechet_distance  # noqa: E402
from sagan_core.evaluate.metrics import Stats  # noqa: E402
from sagan_core.evaluate.prdc import prdc  # noqa: E402
from sagan_core.evaluate.protocol import sample_uint8  # noqa: E402
from sagan_core.model.checkpoint import load_generator  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
PRESET = REPO / "pipelines" / "project" / "presets" / "cifar10.yaml"


# The four variants of the small-data comparison, as `sagan train --set` overrides, with the settings
# the authors use for BigGAN on CIFAR-10 (sagan's G/D are BigGAN-PyTorch's blocks): DiffAugment
# `translation,cutout` (mit-han-lab/data-efficient-gans, DiffAugment-biggan-cifar/scripts;
# `color,...` is their StyleGAN2 policy) and LeCam λ = 0.3 (google/lecam-gan,
# biggan_cifar/scripts/lc-biggan-cifar10*.sh: --LC 0.3). BENCHMARKS.md quotes their tables.
DIFFAUG = ["--set", "train.diffaug=translation,cutout"]
LECAM = ["--set", "train.lecam_weight=0.3"]
VARIANTS = {"baseline": [], "diffaug": DIFFAUG, "lecam": LECAM, "diffaug+lecam": DIFFAUG + LECAM}
RUN_DIR = re.compile(r"(?P<variant>[a-z+]+)-s(?P<seed>\d+)-f(?P<fraction>[0-9.]+)")


def subset(src: Path, dst: Path, fraction: float, seed: int = 0) -> Path:
    """A seeded class-stratified `fraction` of a prepared dataset, as a prepared dataset of its own."""
    from sagan_core.data.dataset import content_hash

    if (dst / "manifest.json").is_file():
        return dst
    labels = np.load(src / "labels.npy")
    rng = np.random.default_rng(seed)
    keep = np.sort(
        np.concatenate(
            [
                rng.choice(
                    np.flatnonzero(labels == c), max(1, round(fraction * (labels == c).sum())), replace=False
                )
                for c in np.unique(labels)
            ]
        )
    )
    dst.mkdir(parents=True, exist_ok=True)
    np.save(dst / "images.npy", np.load(src / "images.npy", mmap_mode="r")[keep])
    np.save(dst / "labels.npy", labels[keep])
    manifest = json.loads((src / "manifest.json").read_text()) | {"num_images": int(len(keep))}
    if "class_counts" in manifest:
        manifest["class_counts"] = np.bincount(labels[keep], minlength=len(manifest["class_counts"])).tolist()
    manifest["content_hash"] = content_hash(dst / "images.npy", labels[keep], manifest["class_names"])
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


def grid_runs(root: Path, prepared: Path, seeds, fractions, variants=tuple(VARIANTS)) -> list[dict]:
    """The grid's runs (fraction x variant x seed), each in root/<variant>-s<seed>-f<fraction>/ with
    the `sagan train --set` overrides that put its outputs there; writes the subsets (one per
    fraction, seed 0, shared by every variant and training seed: the variants see the same images)."""
    runs = []
    for fraction in fractions:
        data = prepared if fraction == 1.0 else subset(prepared, root / f"data-f{fraction}", fraction)
        for variant in variants:
            for seed in seeds:
                run = root / f"{variant}-s{seed}-f{fraction}"
                sets = [f"data.prepared_dir={data.resolve()}", f"train.seed={seed}"]
                sets += [f"train.out_dir={run / 'models'}", f"train.samples_dir={run / 'samples'}"]
                sets += [f"train.metrics_file={run / 'metrics/train.csv'}"]
                sets += VARIANTS[variant][1::2]  # the values of its `--set` pairs
                runs.append(
                    {"name": run.name, "dir": run, "variant": variant, "seed": seed, "fraction": fraction}
                    | {"sets": sets}
                )
    return runs


def plan(args: argparse.Namespace) -> list[str]:
    """The grid's `sagan train` commands (one per variant x seed x fraction); writes the subsets."""
    return [
        " ".join(
            ["sagan", "train", "--params", str(args.params), *sum((["--set", v] for v in r["sets"]), [])]
        )
        for r in grid_runs(args.plan, args.prepared, args.seeds, args.fractions)
    ]


def grid_table(rows: list[dict]) -> str:
    """Mean ± standard deviation over seeds, per (variant, fraction) parsed from the run folders."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        m = next(
            (RUN_DIR.fullmatch(part) for part in Path(r["checkpoint"]).parts if RUN_DIR.fullmatch(part)), None
        )
        if m:
            groups.setdefault((m["variant"], m["fraction"]), []).append(r)
    keys = ["class_accuracy", "judge_fd", "precision", "recall", "density", "coverage"]
    lines = [f"{'variant':<16} {'fraction':>8} {'seeds':>5} " + " ".join(f"{k:>17}" for k in keys)]
    for (variant, fraction), rs in sorted(groups.items()):
        cells = [
            f"{np.mean([r[k] for r in rs]):>8.4f} ± {np.std([r[k] for r in rs], ddof=1 if len(rs) > 1 else 0):<6.4f}"
            for k in keys
        ]
        lines.append(f"{variant:<16} {fraction:>8} {len(rs):>5} " + " ".join(cells))
    return "\n".join(lines)


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
        **prdc(data["ref_feats"], feats),
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
        **prdc(data["ref_feats"], feats),
        "samples": n,
        "seconds": round(time.time() - t0, 1),
    }


def judge_setup(archive: Path, cache_dir: Path, epochs: int, samples: int, device_name: str) -> dict:
    """What scoring needs: the archive's arrays, the (cached) judge, the test split's judge features
    and their statistics, the device; SystemExit when `samples` exceeds the held-out real images."""
    device = resolve_device(device_name, "--device")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = load_data(archive, cache_dir)
    held_out = holdout_per_class(data["train_y"]) * len(data["classes"])
    if samples > held_out:
        raise SystemExit(f"cifar_quality: --samples at most {held_out} (the held-out real images)")
    net, record = get_judge(data, cache_dir, epochs, device, log=lambda s: print(s, file=sys.stderr))
    _, ref_feats = judge_pass(
        net, (data["test_x"][i : i + 500] for i in range(0, len(data["test_x"]), 500)), device
    )
    data["ref_feats"] = ref_feats  # judge-space precision/recall/density/coverage against the test split
    return {"net": net, "record": record, "data": data, "ref": stats(ref_feats), "device": device}


def run(args: argparse.Namespace) -> dict:
    j = judge_setup(args.archive, args.cache_dir, args.epochs, args.samples, args.device)
    net, data, ref, device = j["net"], j["data"], j["ref"], j["device"]
    out = {
        "archive": str(args.archive),
        "judge": j["record"],
        "ceiling": ceiling(net, data, ref, args.samples, device),
    }
    out["checkpoints"] = [score_checkpoint(p, net, data, ref, args.samples, device) for p in args.checkpoint]
    return out


def label(path: Path) -> str:
    """A checkpoint's row name: its grid run folder and file name, else its last three parts."""
    run = next((part for part in path.parts if RUN_DIR.fullmatch(part)), None)
    return (f"{run}/{path.name}" if run else "/".join(path.parts[-3:]))[-40:]


def table(result: dict) -> str:
    j = result["judge"]
    lines = [
        f"judge: {j['recipe']}, {j['epochs']} epochs on {j['train_images']} train images, "
        f"test accuracy {j['test_accuracy']:.4f}",
        f"{'what':<40} {'step':>7} {'class acc':>10} {'judge FD':>10} {'P':>6} {'R':>6} {'D':>6} {'C':>6}",
    ]

    def row(name: str, step: str, r: dict) -> str:
        prdc_cells = " ".join(f"{r[k]:>6.3f}" for k in ("precision", "recall", "density", "coverage"))
        return f"{name:<40} {step:>7} {r['class_accuracy']:>10.4f} {r['judge_fd']:>10.3f} {prdc_cells}"

    lines.append(row("real images (ceiling)", "", result["ceiling"]))
    lines += [row(label(Path(r["checkpoint"])), str(r["step"]), r) for r in result["checkpoints"]]
    if any(RUN_DIR.fullmatch(p) for r in result["checkpoints"] for p in Path(r["checkpoint"]).parts):
        lines += ["", grid_table(result["checkpoints"])]
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
    ap.add_argument("--plan", type=Path, help="print the small-data grid's training commands (runs under it)")
    ap.add_argument(
        "--prepared", type=Path, default=Path("data/prepared"), help="--plan: the full prepared data"
    )
    ap.add_argument(
        "--params", type=Path, default=PRESET, help="--plan: the params file (default: the cifar10 preset)"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="--plan: training seeds")
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1], help="--plan: data fractions")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.plan:
        print("\n".join(plan(args)))
        return 0
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
