"""Benchmark: `sagan prepare` on the 60k CIFAR-10 JPEGs, and BatchLoader throughput at 32 and 64 px.

    .venv/bin/python benchmarks/prepare_and_load.py [--archive PATH] [--workers N] [--seconds S]

Prepare is timed end to end (archive check + extraction + parallel decode + write) in a child
process, so its peak RSS (the largest of that process and its decoding workers, from
getrusage(RUSAGE_CHILDREN) per process tree) is not mixed with this script's. The loader is timed
alone on CPU (uint8 memory map -> shuffled, flipped float batches), without a model.
Prints one JSON object; the numbers go into BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"

CHILD = """
import json, resource, sys, time
from sagan_core.config import DataConfig
from sagan_core.data.prepare import prepare
cfg = DataConfig(source=sys.argv[1], prepared_dir=sys.argv[2], resolution=int(sys.argv[3]), channels=3,
                 workers=int(sys.argv[4]))
t = time.perf_counter()
m = prepare(cfg, progress=False)
seconds = time.perf_counter() - t
self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
workers_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": seconds, "num_images": m["num_images"], "rejected": len(m["rejected"]),
                  "main_rss_mb": self_kb / 1024, "worker_rss_mb": workers_kb / 1024}))
"""


def bench_prepare(archive: Path, resolution: int, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "prepared"
        r = subprocess.run(
            [sys.executable, "-c", CHILD, str(archive), str(out), str(resolution), str(workers)],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=os.environ | {"PYTHONPATH": str(REPO)},
        )
        if r.returncode != 0:
            raise SystemExit(f"prepare failed:\n{r.stderr}")
        res = json.loads(r.stdout.strip().splitlines()[-1])
        size_mb = (out / "images.npy").stat().st_size / 2**20
    res["images_per_s"] = res["num_images"] / res["seconds"]
    res["prepared_mb"] = size_mb
    return res


def bench_loader(resolution: int, seconds: float, batch_size: int = 64, n: int = 50_000) -> dict:
    import torch

    from sagan_core.data.dataset import BatchLoader, PreparedData

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "images.npy"
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 3, resolution, resolution))
        rng = np.random.default_rng(0)
        for i in range(0, n, 5000):
            arr[i : i + 5000] = rng.integers(0, 256, size=arr[i : i + 5000].shape, dtype=np.uint8)
        del arr
        data = PreparedData(np.load(path, mmap_mode="r"), np.zeros(n, dtype=np.int64), {"num_classes": 10})
        loader = BatchLoader(data, batch_size, seed=0, hflip=True, device="cpu")
        for _ in range(20):
            next(loader)
        t, seen = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            x, _ = next(loader)
            seen += len(x)
        rate = seen / (time.perf_counter() - t)
    return {
        "resolution": resolution,
        "batch_size": batch_size,
        "images_per_s": rate,
        "torch_threads": torch.get_num_threads(),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    ap.add_argument("--workers", type=int, default=0, help="decoding processes (0 = one per core)")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0, help="loader timing window per resolution")
    args = ap.parse_args()
    if not args.archive.is_file():
        print(
            f"benchmark: {args.archive} not found (the 60k CIFAR-10 JPEG archive; pass --archive PATH)",
            file=sys.stderr,
        )
        return 2
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "archive": str(args.archive),
        "prepare": bench_prepare(args.archive, args.resolution, args.workers),
        "loader": [bench_loader(r, args.seconds) for r in (32, 64)],
    }
    result["this_process_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
