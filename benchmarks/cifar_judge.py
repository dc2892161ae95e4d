"""The CIFAR-10 judge of benchmarks/cifar_quality.py: the archive's images, and a small CNN trained on them.

The judge is trained once per archive and cached (`--cache-dir`): 45,000 train-split images train it,
the last 500 per class of the train split are held out (real images the judge never saw: the
ceiling's samples), and the test split (10,000) is the reference its accuracy and the Fréchet
distances are measured on. Not part of the product.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

RECIPE = "judge-v1"  # bump when the network or its training changes: old caches are then not reused
HOLDOUT_PER_CLASS = 500
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_archive(archive: Path) -> dict[str, np.ndarray | list[str]]:
    """`train/<class>/*.jpg` and `test/<class>/*.jpg` -> uint8 NHWC arrays and int labels (sorted classes)."""
    rows: dict[str, list[tuple[str, str, np.ndarray]]] = {"train": [], "test": []}
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = m.name.strip("./").split("/")
            if not m.isfile() or len(parts) < 3 or parts[-3] not in rows:
                continue
            with Image.open(io.BytesIO(tar.extractfile(m).read())) as im:
                img = np.asarray(im.convert("RGB").resize((32, 32)), dtype=np.uint8)
            rows[parts[-3]].append((parts[-2], m.name, img))
    classes = sorted({c for split in rows.values() for c, _, _ in split})
    index = {c: i for i, c in enumerate(classes)}
    out: dict[str, np.ndarray | list[str]] = {"classes": classes}
    for split, items in rows.items():
        items.sort(key=lambda r: (index[r[0]], r[1]))  # deterministic, independent of archive order
        out[f"{split}_x"] = np.stack([r[2] for r in items])
        out[f"{split}_y"] = np.array([index[r[0]] for r in items], dtype=np.int64)
    return out


def load_data(archive: Path, cache_dir: Path) -> dict:
    """The archive's arrays, decoded once and cached next to the judge."""
    st = archive.stat()
    cached = cache_dir / f"cifar-{st.st_size}-{int(st.st_mtime)}.npz"
    if not cached.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        d = read_archive(archive)
        np.savez(cached.with_suffix(".tmp.npz"), **{k: np.asarray(v) for k, v in d.items()})
        cached.with_suffix(".tmp.npz").replace(cached)
    with np.load(cached) as z:
        d = {k: z[k] for k in z.files}
    d["classes"] = [str(c) for c in d["classes"]]
    return d


def holdout_per_class(y: np.ndarray) -> int:
    """500 per class for CIFAR-10 (5,000 per class); a tenth of the smallest class for toy archives."""
    return min(HOLDOUT_PER_CLASS, int(np.bincount(y).min()) // 10)


def split_holdout(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (fit, held out): the last images of every class are held out (holdout_per_class)."""
    per_class = holdout_per_class(y)
    hold = np.concatenate([np.flatnonzero(y == c)[-per_class:] for c in np.unique(y)])
    fit = np.setdiff1d(np.arange(len(y)), hold)
    return fit, hold


class Judge(nn.Module):
    """Four conv stages (16-128 channels, 32x32 -> 2x2) and a 256-d penultimate layer (the Fréchet
    features). Small on purpose: it trains in minutes on 2 CPU cores."""

    def __init__(self, num_classes: int = 10, width: int = 16):
        super().__init__()
        layers, cin = [], 3
        for cout in (width, 2 * width, 4 * width, 8 * width):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
            layers += [nn.MaxPool2d(2)]
            cin = cout
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.penultimate = nn.Sequential(nn.Dropout(0.2), nn.Linear(cin, 256), nn.ReLU())
        self.head = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8-scaled floats in [0, 1], NCHW -> (logits, penultimate features)."""
        f = self.penultimate(self.features((x - 0.5) / 0.25))
        return self.head(f), f


def to_input(images_u8: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC (numpy) or NCHW (torch, the generator's quantized output) -> float NCHW in [0, 1]."""
    t = torch.as_tensor(images_u8)
    if t.shape[-1] == 3:
        t = t.permute(0, 3, 1, 2)
    return t.to(device).float().div(255.0)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 4-px-padded random crops (the usual CIFAR augmentation)."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(3), x)
    dx, dy = (int(v) for v in torch.randint(0, 9, (2,), generator=gen))
    return F.pad(x, (4, 4, 4, 4), mode="reflect")[:, :, dy : dy + 32, dx : dx + 32]


def train_judge(x: np.ndarray, y: np.ndarray, epochs: int, device: torch.device, log=print) -> Judge:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = Judge(int(y.max()) + 1).to(device)
    batch, steps = 128, epochs * (len(x) // 128)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    yt = torch.as_tensor(y)
    t0, step = time.time(), 0
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - batch + 1, batch):
            idx = order[i : i + batch]
            xb = _augment(to_input(x[idx.numpy()], device), gen)
            loss = F.cross_entropy(net(xb)[0], yt[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
        log(f"judge epoch {epoch + 1}/{epochs}: loss {loss.item():.3f} ({time.time() - t0:.0f} s)")
    return net.eval()


@torch.inference_mode()
def judge_pass(net: Judge, batches, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(predicted classes, penultimate features float64) of uint8 image batches."""
    preds, feats = [], []
    for b in batches:
        logits, f = net(to_input(b, device))
        preds.append(logits.argmax(1).cpu().numpy())
        feats.append(f.double().cpu().numpy())
    return np.concatenate(preds), np.concatenate(feats)


def get_judge(
    data: dict, cache_dir: Path, epochs: int, device: torch.device, log=print
) -> tuple[Judge, dict]:
    """The cached judge for this archive (trained on first use) and its record (accuracy, seconds)."""
    key = f"{RECIPE}-{len(data['train_x'])}-{int(data['train_x'][:64].sum())}-e{epochs}"
    path = cache_dir / f"{key}.pt"
    if path.exists():
        saved = torch.load(path, weights_only=False)
        net = Judge(len(data["classes"]))
        net.load_state_dict(saved["state"])
        return net.to(device).eval(), saved["record"]
    fit, _ = split_holdout(data["train_y"])
    t0 = time.time()
    net = train_judge(data["train_x"][fit], data["train_y"][fit], epochs, device, log)
    seconds = time.time() - t0
    pred, _ = judge_pass(net, _batches(data["test_x"]), device)
    record = {
        "recipe": RECIPE,
        "epochs": epochs,
        "train_images": len(fit),
        "train_seconds": round(seconds, 1),
    }
    record["test_accuracy"] = float((pred == data["test_y"]).mean())
    cache_dir.mkdir(parents=True, exist_ok=True)
    torch.save({"state": net.state_dict(), "record": record}, path)
    return net, record


def _batches(x: np.ndarray, size: int = 500):
    for i in range(0, len(x), size):
        yield x[i : i + size]


def write_toy_archive(path: Path, train_per_class: int = 20, test_per_class: int = 5) -> Path:
    """A CIFAR-shaped .tar.gz (train/<class>/N.jpg, test/<class>/N.jpg) of 32-px images whose colour
    depends on the class: for dry runs and tests where ../shared is absent."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", train_per_class), ("test", test_per_class)):
            for c, name in enumerate(CIFAR10_CLASSES):
                colour = np.array([(c * 97) % 256, (c * 53 + 80) % 256, (c * 181 + 30) % 256])
                for i in range(n):
                    img = np.clip(colour + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(img).save(buf, format="JPEG", quality=90)
                    info = tarfile.TarInfo(f"{split}/{name}/{i:04d}.jpg")
                    info.size = buf.tell()
                    buf.seek(0)
                    tar.addfile(info, buf)
    return path
