"""The small-data grid of issue 24 in one command: train, score and tabulate every run, resumably.

VARIANTS (baseline, DiffAugment, LeCam, both) x `--seeds` x `--fractions` runs of the CIFAR-10 preset
at the CPU baseline's setting (BENCHMARKS.md: width 8, batch 32, TTUR 2e-4 / 8e-4, EMA 0.999 from
step 200, fp32, `--steps` 2,200), every one scored by benchmarks/cifar_quality.py's judge. Under
`--work DIR`: params.yaml (the preset with those overrides), data/prepared (prepared once from
`--archive`), the fraction subsets, one folder per run (`<variant>-s<seed>-f<fraction>/`: train.log,
models/, samples/, metrics/, score.json), the judge's cache (judge/), and the results: grid.json,
grid.txt (the per-run table and the mean ± sd table over seeds) and montage.png (one sample grid per
(variant, fraction): rows the variants, columns the fractions, seed = the first).

Invoking it again continues: finished runs are skipped, interrupted ones continue with
`sagan train --resume` (bit-exact), scored checkpoints are not scored again. Exit 1 with one line
naming a log when a run failed or was stopped unfinished (`--train-budget-s`); 2 on usage mistakes.

  python benchmarks/cifar_grid.py --work /work/grid                     # the whole grid (~5-6 h, 2 cores)
  python benchmarks/cifar_grid.py --work /tmp/g --steps 2 --seeds 0 --fractions 1.0 0.5 \\
      --variants baseline diffaug+lecam --samples 20 --judge-epochs 1     # a toy rehearsal
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # cifar_quality, grid_pool beside this file
import cifar_quality as cq  # noqa: E402
from grid_pool import Job, run_pool  # noqa: E402

from sagan_core.device import resolve_device  # noqa: E402
from sagan_core.model.checkpoint import step_of  # noqa: E402

REPO = cq.REPO
# The CPU baseline's overrides of the preset (BENCHMARKS.md "CPU baseline run of the CIFAR-10
# preset"); fp32 everywhere (the baseline's CPU had no bf16: its auto was fp32; CUDA's auto is bf16);
# no in-training evaluation (no Inception weights offline) and no MLflow.
BASELINE = {
    "model": {"g_ch": 8, "d_ch": 8},
    "train": {"batch_size": 32, "lr_g": 2e-4, "lr_d": 8e-4, "ema_decay": 0.999, "ema_start": 200}
    | {"checkpoint_every": 200, "eval_every": 0, "precision": "fp32"},
    "data": {"workers": 0},
    "tracking": {"enabled": False},
}
OUTPUTS = ("grid.json", "grid.txt", "montage.png", "logs.tar.gz")


def write_params(work: Path, archive: Path) -> Path:
    """work/params.yaml: the preset with the baseline's overrides, data from `archive`. Refuses a
    work folder whose params.yaml says otherwise (another archive): one grid per folder."""
    raw = yaml.safe_load(cq.PRESET.read_text())
    for section, values in BASELINE.items():
        raw[section].update(values)
    raw["data"] |= {"source": str(archive.resolve()), "prepared_dir": str(work / "data" / "prepared")}
    text = "# benchmarks/cifar_grid.py: the cifar10 preset at the CPU baseline's setting\n"
    text += yaml.safe_dump(raw, sort_keys=False)
    path = work / "params.yaml"
    if path.is_file() and yaml.safe_load(path.read_text()) != raw:
        raise SystemExit(f"cifar_grid: {path} holds other settings (another archive?): use another --work")
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def sagan(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def child_env() -> dict[str, str]:
    """This environment with the repository importable (the runs' cwd is their own folder)."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return dict(os.environ) | {"PYTHONPATH": os.pathsep.join(paths)}


def prepare(work: Path, params: Path) -> Path:
    prepared = work / "data" / "prepared"
    if (prepared / "manifest.json").is_file():
        return prepared
    log = work / "prepare.log"
    print(f"preparing the archive into {prepared} (log {log})", flush=True)
    with open(log, "a") as f:
        rc = subprocess.run(
            sagan("prepare", "--quiet", "--params", str(params)),
            cwd=work,
            env=child_env(),
            stdout=f,
            stderr=f,
        ).returncode
    if rc != 0:
        raise SystemExit(f"cifar_grid: `sagan prepare` failed (exit {rc}): see {log}")
    return prepared


def make_jobs(args: argparse.Namespace, params: Path, device: str) -> list[Job]:
    """One job per run; finished runs marked skipped, started ones resumed from their checkpoint."""
    runs = cq.grid_runs(args.work, prepare(args.work, params), args.seeds, args.fractions, args.variants)
    jobs = []
    for i, r in enumerate(runs, 1):
        sets = [*r["sets"], f"train.steps={args.steps}", f"train.device={device}"]
        cmd = sagan("train", "--params", str(params), *sum((["--set", s] for s in sets), []))
        label = f"{r['variant']} s{r['seed']} f{r['fraction']}"
        job = Job(i, len(runs), label, cmd, r["dir"], r["dir"] / "train.log", args.steps, run=r)
        done = step_of(r["dir"] / "models" / "checkpoint.pt")
        if done is not None and done >= args.steps:
            job.status, job.step = "skipped", done
        elif done:
            job.cmd, job.start_step = [*cmd, "--resume"], done
        r["dir"].mkdir(parents=True, exist_ok=True)
        jobs.append(job)
    return jobs


def train_all(jobs: list[Job], args: argparse.Namespace, on_cuda: bool) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parallel = args.jobs or (min(12, cores) if on_cuda else 1)
    threads = max(1, cores // parallel)
    for job in jobs:
        if job.status == "skipped":
            print(f"{job.prefix}: finished earlier (step {job.step}): skipped", flush=True)
    todo = sum(j.status == "queued" for j in jobs)
    print(f"training {todo} of {len(jobs)} runs, {parallel} at a time, {threads} threads each", flush=True)
    say = lambda s: print(s, flush=True)  # noqa: E731
    run_pool(jobs, parallel, threads, child_env(), args.train_budget_s, args.progress_s, say)


def score_all(jobs: list[Job], args: argparse.Namespace, device: str) -> dict:
    """cifar_quality's judge, ceiling and figures for every finished run (score.json caches each)."""
    j = cq.judge_setup(args.archive, args.work / "judge", args.judge_epochs, args.samples, device)
    net, data, ref, dev = j["net"], j["data"], j["ref"], j["device"]
    out = {"archive": str(args.archive), "judge": j["record"]}
    out["ceiling"] = cq.ceiling(net, data, ref, args.samples, dev)
    out["checkpoints"] = []
    for job in (j for j in jobs if j.status in ("ok", "skipped")):
        ckpt, cache = job.run["dir"] / "models" / "checkpoint.pt", job.run["dir"] / "score.json"
        key = {"samples": args.samples, "judge": j["record"], "mtime_ns": ckpt.stat().st_mtime_ns}
        saved = json.loads(cache.read_text()) if cache.is_file() else {}
        if saved.get("key") != key:
            print(f"{job.prefix}: scoring {args.samples} samples", flush=True)
            saved = {"key": key, "score": cq.score_checkpoint(ckpt, net, data, ref, args.samples, dev)}
            cache.write_text(json.dumps(saved, indent=1) + "\n")
        out["checkpoints"].append(saved["score"])
    return out


def montage(jobs: list[Job], args: argparse.Namespace, path: Path) -> dict:
    """One PNG: each (variant, fraction)'s last sample grid (its first seed's), variants as rows."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    from torchvision.utils import make_grid, save_image

    tiles, cells = [], []
    for variant in args.variants:
        for fraction in args.fractions:
            runs = [j.run for j in jobs if (j.run["variant"], j.run["fraction"]) == (variant, fraction)]
            pngs = [r["dir"] / "samples" / "latest.png" for r in runs]
            png = next((p for p in pngs if p.is_file()), None)
            cells.append({"variant": variant, "fraction": fraction, "image": str(png) if png else None})
            tiles.append(pil_to_tensor(Image.open(png).convert("RGB")).float() / 255 if png else None)
    found = [t for t in tiles if t is not None]
    if not found:
        return {"path": None, "cells": cells}
    tiles = [torch.ones_like(found[0]) if t is None else t for t in tiles]  # white: no image
    save_image(make_grid(tiles, nrow=len(args.fractions), padding=8, pad_value=1.0), path)
    return {"path": str(path), "rows": args.variants, "columns": args.fractions, "cells": cells}


def failure(jobs: list[Job]) -> str | None:
    """The one-line verdict when some runs did not finish, naming the first one's log."""
    bad = [j for j in jobs if j.status not in ("ok", "skipped")]
    if not bad:
        return None
    first = bad[0]
    how = f"exit {first.returncode}" if first.status == "failed" else f"{first.status} at step {first.step}"
    return (
        f"cifar_grid: {len(bad)} of {len(jobs)} runs did not finish; first: {first.run['name']} "
        f"({how}), log {first.log}; rerun the same command to continue"
    )


def report(jobs: list[Job], result: dict, args: argparse.Namespace) -> None:
    result["runs"] = [
        {"name": j.run["name"], "variant": j.run["variant"], "seed": j.run["seed"]}
        | {"fraction": j.run["fraction"], "status": j.status, "step": j.step, "log": str(j.log)}
        for j in jobs
    ]
    result["montage"] = montage(jobs, args, args.work / "montage.png")
    result["settings"] = {"steps": args.steps, "samples": args.samples, "judge_epochs": args.judge_epochs}
    text = cq.table(result)
    print(text)
    (args.work / "grid.txt").write_text(text + "\n")
    (args.work / "grid.json").write_text(json.dumps(result, indent=2) + "\n")
    with tarfile.open(args.work / "logs.tar.gz", "w:gz") as tar:
        logs = [p for j in jobs for p in (j.log, j.run["dir"] / "metrics" / "train.csv")]
        for f in [args.work / "prepare.log", *logs]:
            if f.is_file():
                tar.add(f, arcname=str(f.relative_to(args.work)))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for name in OUTPUTS:
            if (args.work / name).is_file():
                shutil.copy2(args.work / name, args.out / name)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch folder (the runs, the judge, results)")
    ap.add_argument("--archive", type=Path, default=cq.ARCHIVE, help="CIFAR-10 JPEG archive (train/, test/)")
    ap.add_argument("--steps", type=int, default=2200, help="G steps per run (the CPU baseline's 2,200)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    ap.add_argument("--variants", nargs="+", default=list(cq.VARIANTS), choices=list(cq.VARIANTS))
    ap.add_argument("--samples", type=int, default=5000, help="samples scored per run (and real images)")
    ap.add_argument("--judge-epochs", type=int, default=6, help="judge training epochs (first run only)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (training and scoring)")
    ap.add_argument("--jobs", type=int, help="runs at a time [default: 1 on CPU, min(12, cores) on CUDA]")
    ap.add_argument("--train-budget-s", type=float, help="stop unfinished runs after this many seconds")
    ap.add_argument("--progress-s", type=float, default=60.0, help="seconds between progress lines")
    ap.add_argument("--out", type=Path, help="also copy grid.json, grid.txt, montage.png, logs.tar.gz here")
    args = ap.parse_args(argv)
    if not 0 < min(args.fractions) <= max(args.fractions) <= 1 or args.steps < 1 or (args.jobs or 1) < 1:
        ap.error("--fractions in (0, 1], --steps and --jobs at least 1")
    args.work = args.work.resolve()
    return args


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if not args.archive.is_file():
        print(f"cifar_grid: {args.archive} not found (--archive): nothing was run", file=sys.stderr)
        return 2
    on_cuda = resolve_device(args.device, "--device").type == "cuda"
    device = "cuda" if on_cuda and args.device == "auto" else args.device
    params = write_params(args.work, args.archive)
    jobs = make_jobs(args, params, device)
    signal.signal(signal.SIGTERM, _interrupt)  # `timeout`, `kill`: the runs are stopped first, too
    try:
        train_all(jobs, args, on_cuda)
    except KeyboardInterrupt:
        print("cifar_grid: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    report(jobs, score_all(jobs, args, device), args)
    verdict = failure(jobs)
    if verdict:
        print(verdict, file=sys.stderr)
    return 1 if verdict else 0


if __name__ == "__main__":
    sys.exit(main())
