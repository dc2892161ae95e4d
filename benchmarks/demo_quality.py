"""Are the demo generator's class-conditional samples recognisable digits of the requested class?

Trains a small CNN on real digits (the prepared demo dataset: the MNIST test set, 9k for training,
1k held out to report the classifier's own accuracy), then draws `--per-class` samples of every
class from the checkpoint's EMA generator and reports the fraction classified as the class asked
for. Not part of the product: a yardstick for the demo preset.

  python benchmarks/demo_quality.py --checkpoint models/checkpoint.pt --prepared data/prepared
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sagan_core.data.dataset import open_prepared
from sagan_core.model.checkpoint import load_generator
from sagan_core.model.visualize import save_grid


def classifier() -> nn.Module:
    """LeNet-style: two conv/pool stages, then a dense head (keeps where strokes are)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(64 * 8 * 8, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def train_classifier(
    prepared: Path, epochs: int, device: torch.device, seed: int = 0
) -> tuple[nn.Module, float]:
    data = open_prepared(prepared)
    x = torch.from_numpy(np.array(data.images)).float().div(127.5).sub(1)
    y = torch.from_numpy(data.labels[:])
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    train_idx, test_idx = perm[1000:], perm[:1000]
    torch.manual_seed(seed)
    net = classifier().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        net.train()
        for idx in train_idx[torch.randperm(len(train_idx), generator=g)].split(128):
            xb = x[idx].to(device)
            shift = torch.randint(-2, 3, (2,), generator=g).tolist()  # small translations: robustness
            xb = torch.roll(xb, shifts=shift, dims=(2, 3))
            loss = F.cross_entropy(net(xb), y[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(x[test_idx].to(device)).argmax(1).cpu() == y[test_idx]).float().mean().item()
    return net, acc


@torch.no_grad()
def sample_accuracy(net: nn.Module, checkpoint: Path, per_class: int, device: torch.device, out: Path | None):
    g, meta = load_generator(checkpoint, use_ema=True, device=device)
    spec = g.spec
    if spec.num_classes != 10 or spec.channels != 1:
        raise SystemExit(f"{checkpoint}: expected a class-conditional 1-channel digit generator")
    gen = torch.Generator(device="cpu").manual_seed(123)
    y = torch.arange(10).repeat_interleave(per_class)
    z = torch.randn(len(y), spec.z_dim, generator=gen)
    images = torch.cat([g(zb.to(device), yb.to(device)) for zb, yb in zip(z.split(200), y.split(200))])
    images = (images.clamp(-1, 1) * 127.5 + 127.5).round().div(127.5).sub(1)  # as saved to uint8
    pred = torch.cat([net(b).argmax(1) for b in images.split(500)]).cpu()
    per = [(pred[y == k] == k).float().mean().item() for k in range(10)]
    if out is not None:
        idx = torch.cat([torch.nonzero(y == k)[:10, 0] for k in range(10)])
        save_grid(images[idx].cpu(), out, nrow=10)
    return (pred == y).float().mean().item(), per, meta["step"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, nargs="+", default=[Path("models/checkpoint.pt")])
    ap.add_argument("--prepared", type=Path, default=Path("data/prepared"))
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--grid", type=Path, default=None, help="write a 10x10 grid of the classified samples")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    device = torch.device(args.device)
    t0 = time.perf_counter()
    net, acc = train_classifier(args.prepared, args.epochs, device)
    print(
        f"digit classifier: {acc:.1%} accuracy on 1,000 held-out real digits ({time.perf_counter() - t0:.0f} s)"
    )
    for ckpt in args.checkpoint:
        frac, per, step = sample_accuracy(net, ckpt, args.per_class, device, args.grid)
        per_txt = " ".join(f"{k}:{p:.0%}" for k, p in enumerate(per))
        print(
            f"{ckpt} (step {step}): {frac:.1%} of {10 * args.per_class} samples classified as the "
            f"requested class  [{per_txt}]"
        )


if __name__ == "__main__":
    main()
