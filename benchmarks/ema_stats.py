"""How far the EMA generator's eval-mode output is from its own batch statistics, with G's copied
BatchNorm running statistics versus standing statistics of N batches (sagan_core/train/standing_stats.py).

Gap = mean |eval-mode output - batch-statistics output| on the [-1, 1] scale, same z/labels, 500
images; the raw G with its own running statistics is the reference point.

  python benchmarks/ema_stats.py models/checkpoint.pt
"""

from __future__ import annotations

import argparse
import copy

import torch

from sagan_core.model import checkpoint as ckpt_io
from sagan_core.model.networks import Generator, ModelSpec
from sagan_core.train import standing_stats


def batch_stat_gap(g: torch.nn.Module, n: int = 500) -> float:
    """Mean |eval-mode output - output with the batch's own BatchNorm statistics|, same z/labels."""
    noise = torch.Generator().manual_seed(1)
    z = torch.randn(n, g.spec.z_dim, generator=noise)
    y = torch.randint(g.spec.num_classes, (n,), generator=noise) if g.spec.num_classes else None
    batch = copy.deepcopy(g.eval())
    for m in batch.modules():
        if isinstance(m, standing_stats.BATCHNORMS):
            m.train()
    with torch.no_grad():
        return (g(z, y) - batch(z, y)).abs().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--batches", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    ckpt, cpu = ckpt_io.load(args.checkpoint), torch.device("cpu")
    train = ckpt.get("params", {}).get("train", {})
    print(f"step {ckpt['step']}, ema_decay {train.get('ema_decay')}")

    def generator(key: str) -> Generator:
        g = Generator(ModelSpec.from_dict(ckpt["spec"]))
        g.load_state_dict(ckpt[key])
        return g.eval()

    # a checkpoint written with standing statistics holds them: the "copied" row needs G's buffers
    ema = generator("generator_ema")
    ema.load_state_dict(
        {k: v for k, v in ckpt["generator"].items() if "running_" in k or "num_batches" in k}, strict=False
    )
    print(f"EMA G, G's running statistics: gap {batch_stat_gap(ema):.4f}")
    for n in args.batches:
        g = generator("generator_ema")
        standing_stats.accumulate(g, n, args.batch_size, 2, cpu)
        print(f"EMA G, standing statistics {n} x {args.batch_size}: gap {batch_stat_gap(g):.4f}")
    print(f"raw G, its own running statistics: gap {batch_stat_gap(generator('generator')):.4f}")


if __name__ == "__main__":
    main()
