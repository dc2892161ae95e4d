"""How fast do demo candidates learn class-conditional digits? Accuracy of the digit classifier over training.

Each candidate is params.yaml plus overrides, trained on the bundled demo digits (fp32 and NCHW
unless --precision / --channels-last say otherwise); every `--every` steps, 500 class-balanced samples of the EMA generator (eval mode), of
the EMA generator with batch statistics, and of the raw generator are classified by
demo_quality's classifier. Used to choose params.yaml's demo preset (BENCHMARKS.md, "Demo quality").

  python benchmarks/demo_sweep.py --only preset preset-official-cbn-init --steps 2000
  OMP_NUM_THREADS=1 python benchmarks/demo_sweep.py --only preset &   # two candidates on 2 cores
  python benchmarks/demo_sweep.py --only preset --precision bf16 --channels-last yes --steps 2400 \
      --save-at 1800 2400      # checkpoints to score with demo_quality.py (1,000 samples)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from demo_quality import train_classifier  # noqa: E402

from sagan_core.data.prepare import prepare  # noqa: E402
from sagan_core.model import checkpoint as ckpt_io  # noqa: E402
from sagan_core.model import layers  # noqa: E402
from sagan_core.params_file import validate  # noqa: E402
from sagan_core.train.progress import Callback  # noqa: E402
from sagan_core.train.state import TrainState  # noqa: E402
from sagan_core.train.trainer import Trainer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# name -> (params.yaml overrides, cBN init: "default" or "official" = all gains 1, biases 0)
CANDIDATES: dict[str, tuple[dict, str]] = {
    "preset": ({}, "default"),
    "preset-official-cbn-init": ({}, "official"),
    "preset-d16": ({"model": {"d_ch": 16}}, "default"),
    "preset-lr4x": ({"train": {"lr_g": 4e-4, "lr_d": 1.6e-3}}, "default"),
}


def official_cbn_init(model: torch.nn.Module) -> None:
    """The official TF code's conditional-BN init: every class starts at gain 1, bias 0."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, layers.ConditionalBatchNorm) and m.num_classes:
                m.gain.weight.fill_(1.0)
                m.bias.weight.zero_()


@torch.no_grad()
def accuracy(net: torch.nn.Module, g: torch.nn.Module, batch_stats: bool, per_class: int = 50) -> float:
    g = copy.deepcopy(g).train(batch_stats)
    gen = torch.Generator().manual_seed(123)
    y = torch.arange(10).repeat_interleave(per_class)
    z = torch.randn(len(y), g.spec.z_dim, generator=gen)
    perm = torch.randperm(len(y), generator=gen)  # mixed classes in the batch-statistics case
    x = g(z[perm], y[perm])
    x = (x.clamp(-1, 1) * 127.5 + 127.5).round().div(127.5).sub(1)  # as saved to uint8
    return (net(x).argmax(1) == y[perm]).float().mean().item()


class Probe(Callback):
    def __init__(self, name: str, net: torch.nn.Module, every: int, results: list, save_at=(), out=None):
        self.name, self.net, self.every, self.results, self.t0 = name, net, every, results, time.time()
        self.save_at, self.out = set(save_at), out

    def on_step_end(self, step: int, state: TrainState) -> None:
        if step in self.save_at:  # a full checkpoint, for demo_quality.py
            ckpt_io.save_atomic(state.state_dict(), self.out / f"checkpoint_{step:06d}.pt")
        if step % self.every:
            return
        row = {
            "step": step,
            "seconds": round(time.time() - self.t0),
            "ema": accuracy(self.net, state.G_ema.module, False),
            "ema_batch_stats": accuracy(self.net, state.G_ema.module, True),
            "G": accuracy(self.net, state.G, False),
        }
        self.results.append(row)
        print(
            f"{self.name} step {step} t={row['seconds']}s  EMA {row['ema']:.1%}  "
            f"EMA(batch stats) {row['ema_batch_stats']:.1%}  G {row['G']:.1%}",
            flush=True,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=Path("/tmp/sagan-sweep"))
    ap.add_argument("--only", nargs="*", default=None, help=f"of {', '.join(CANDIDATES)}")
    ap.add_argument("--steps", type=int, default=None, help="default: params.yaml's train.steps")
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--precision", default="fp32", help="train.precision (auto | fp32 | bf16)")
    ap.add_argument("--channels-last", default="no", help="train.channels_last (auto | yes | no)")
    ap.add_argument("--save-at", type=int, nargs="*", default=[], help="steps to save checkpoints at")
    args = ap.parse_args()
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    prepared = args.out / "data/prepared"
    prepare(validate({**base, "data": {**base["data"], "prepared_dir": str(prepared)}}).data, progress=False)
    net, acc = train_classifier(prepared, epochs=4, device=torch.device(args.device))
    print(f"classifier accuracy on held-out real digits: {acc:.1%}", flush=True)
    for name, (over, cbn_init) in CANDIDATES.items():
        if args.only and name not in args.only:
            continue
        raw = copy.deepcopy(base)
        for section, values in over.items():
            raw[section] |= values
        run = args.out / name
        raw["data"]["prepared_dir"] = str(prepared)
        raw["train"] |= {
            "device": args.device,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "out_dir": str(run / "models"),
            "samples_dir": str(run / "samples"),
            "metrics_file": str(run / "train.csv"),
            "sample_every": 10**6,
            "checkpoint_every": 10**6,
        }
        if args.steps:
            raw["train"]["steps"] = args.steps
        results: list[dict] = []
        probe = Probe(name, net, args.every, results, args.save_at, run)
        trainer = Trainer(validate(raw), [probe], progress=False)
        if cbn_init == "official":
            official_cbn_init(trainer.state.G)
            trainer.state.G_ema.module.load_state_dict(trainer.state.G.state_dict())
        trainer.fit()
        (run / "accuracy.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
