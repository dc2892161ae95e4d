"""The CPU training step before and after a background thread has run torch, with and without the
guard that background jobs use (pipelines/tracking/uploads.py, `one_torch_thread`).

torch's OpenMP runtime (libgomp) gives each thread that runs a parallel op its own team of worker
threads. Once a second team exists, libgomp counts more threads than cores and its workers stop
spin-waiting between parallel regions (they sleep and are woken instead) in every team, for the
rest of the process. Each mode runs in its own process, since the effect lasts for the process:

- `plain`: the background thread runs a few 512x512 matmuls as is (what logging a generator did);
- `guarded`: the same work inside `one_torch_thread()` (one intra-op thread in that thread);
- `idle`: a background thread that runs no torch (the control: drift between the two timings).

Both time `--rounds` x `--steps` training steps of the real Trainer (demo size: 32 px, ch 8, batch
32, bf16 as `precision: auto` picks on this CPU) before and after the background work; the modes
alternate over `--repeat` rounds of processes, so machine load hits both alike.

  python benchmarks/background_threads.py            # 2 rounds of 3 processes, ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import make_trainer, synthetic_dataset  # noqa: E402

from pipelines.tracking.uploads import one_torch_thread  # noqa: E402

MODES = ("plain", "guarded", "idle")


def step_ms(t, mods, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        t.train_step(*mods)
    return (time.perf_counter() - t0) / steps * 1000


def child(mode: str, rounds: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        prepared = synthetic_dataset(Path(tmp), 32, channels=3)
        t = make_trainer(prepared, 32, "bf16", "cpu", 8, 32, Path(tmp))
        mods = t._prepare_modules()  # noqa: SLF001 - the Trainer's own G/D wrappers, as fit() uses them
        step_ms(t, mods, steps)  # warm-up: oneDNN primitives, allocator
        before = [step_ms(t, mods, steps) for _ in range(rounds)]

        def work():
            a = torch.randn(512, 512)
            for _ in range(5):
                a = (a @ a).tanh()

        def background():
            if mode == "guarded":
                with one_torch_thread():
                    work()
            elif mode == "plain":
                work()
            done.wait()  # the thread lives on, as the uploads thread does during a run

        done = threading.Event()
        thread = threading.Thread(target=background, daemon=True)
        thread.start()
        time.sleep(1.0)
        after = [step_ms(t, mods, steps) for _ in range(rounds)]
        done.set()
    b, a = statistics.median(before), statistics.median(after)
    return {"mode": mode, "before_ms": round(b, 1), "after_ms": round(a, 1), "slowdown": round(a / b, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=2, help="rounds of processes (one per mode)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.rounds, args.steps)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms per training step (median)")
    for _ in range(args.repeat):
        for mode in MODES:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--rounds",
                str(args.rounds),
                "--steps",
                str(args.steps),
            ]
            r = json.loads(
                subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1]
            )
            print(
                f"{r['mode']:8s} before {r['before_ms']:6.1f}  after {r['after_ms']:6.1f}  x{r['slowdown']:.3f}"
            )


if __name__ == "__main__":
    main()
