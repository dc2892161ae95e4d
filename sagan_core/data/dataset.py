"""The prepared dataset (`data.prepared_dir`: images.npy uint8 N x C x H x W, labels.npy int64 N,
manifest.json) and the training loader. `open_prepared` refuses files that do not match the
manifest's content_hash (an FID cache keyed by it would serve another dataset's statistics).
The loader is no torch DataLoader: batches are indexed out of the memory map in this process (tens
of thousands of small images per second), so its whole state is (epoch, cursor): exact resume."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sagan_core.errors import ConfigError, SaganError


@dataclass
class PreparedData:
    images: np.ndarray  # memory map, uint8 N C H W
    labels: np.ndarray  # int64 N
    manifest: dict[str, Any]

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    def __len__(self) -> int:
        return int(self.images.shape[0])


# What readers take from the manifest, with the types prepare writes.
MANIFEST_KEYS = dict.fromkeys(("num_images", "num_classes", "resolution", "channels"), int)
MANIFEST_KEYS |= {"content_hash": str, "class_names": list}

# (path, inode, size, mtime) of both arrays -> the hash checked, once per process: SHA-256 is ~0.5 GB/s
# (CIFAR-10 at 32 px ~0.3 s), and a stamp on disk would sit in the DVC-tracked folder or trust an
# mtime that copy tools preserve.
_verified: dict[tuple, str] = {}


def content_hash(images: Path, labels: np.ndarray, class_names: list[str]) -> str:
    """SHA-256 of pixels, shape, labels and class names: nothing about the source's location."""
    shape = (arr := np.load(images, mmap_mode="r")).shape  # the header: nothing read yet
    with open(images, "rb") as f:
        f.seek(arr.offset)
        hasher = hashlib.file_digest(f, "sha256")
    hasher.update(json.dumps([list(shape[1:]), shape[0], class_names]).encode())
    hasher.update(np.asarray(labels).astype("<i8").tobytes())
    return hasher.hexdigest()


def _damaged(path: Path, what: str) -> SaganError:
    return SaganError(f"{path}: {what}; run `sagan prepare` again")


def open_prepared(directory: str | Path) -> PreparedData:
    """The prepared dataset; a damaged one is a SaganError naming the file."""
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.exists():
        raise ConfigError(f"{directory}: no prepared dataset (run `sagan prepare` first)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise _damaged(path, f"not valid JSON ({type(e).__name__})") from None
    if not isinstance(manifest, dict):
        raise _damaged(path, "expected a JSON object")
    try:
        images = np.load(directory / "images.npy", mmap_mode="r")
        labels = np.load(directory / "labels.npy")
    except (OSError, ValueError) as e:
        raise _damaged(directory, f"prepared dataset is damaged ({e})") from None
    if missing := sorted(MANIFEST_KEYS.keys() - manifest.keys()):
        raise _damaged(path, f"missing {', '.join(missing)}")
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest[key], kind) or isinstance(manifest[key], bool):
            raise _damaged(path, f"{key} is {manifest[key]!r}, expected {kind.__name__}")
    if images.ndim != 4 or images.dtype != np.uint8:
        shape = f"{images.dtype} {images.shape}"
        raise _damaged(directory / "images.npy", f"expected uint8 N x C x H x W, got {shape}")
    if manifest["num_images"] != len(images):
        raise _damaged(path, f"num_images is {manifest['num_images']}, images.npy has {len(images)}")
    if labels.shape != (len(images),):
        raise _damaged(directory / "labels.npy", f"{len(labels)} labels for {len(images)} images")
    stats = [os.stat(directory / name) for name in ("images.npy", "labels.npy")]
    key = (str(directory.resolve()), *((s.st_ino, s.st_size, s.st_mtime_ns) for s in stats))
    if _verified.get(key) != (want := manifest["content_hash"]):
        if content_hash(directory / "images.npy", labels, manifest["class_names"]) != want:
            why = "do not match its content_hash (changed since prepare, or copied in part)"
            raise _damaged(path, f"images.npy/labels.npy {why}")
        _verified[key] = want
    return PreparedData(images, labels, manifest)


class BatchLoader:
    """Endless shuffled batches in [-1, 1] on `device`: epoch e permuted by a generator seeded with
    (seed, e), rank r of w taking every w-th index; incomplete final batches dropped."""

    def __init__(
        self,
        data: PreparedData,
        batch_size: int,
        seed: int,
        hflip: bool = False,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ):
        self.data, self.batch_size, self.seed, self.hflip = data, batch_size, seed, hflip
        self.device, self.rank, self.world_size = torch.device(device), rank, world_size
        self.shard_len = len(data) // world_size
        if self.shard_len < batch_size:
            raise ConfigError(
                f"train.batch_size: expected at most {self.shard_len} (images per process), got {batch_size}"
            )
        self.epoch, self.cursor = 0, 0
        self._order: np.ndarray | None = None
        self._flips: np.ndarray | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.shard_len // self.batch_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = None

    def _draw_epoch(self) -> None:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        perm = torch.randperm(len(self.data), generator=g)[: self.shard_len * self.world_size]
        order = perm[self.rank :: self.world_size].numpy()
        # Each batch's indices sorted: the memory map is read front to back (a batch is a set).
        full = self.batches_per_epoch * self.batch_size
        order[:full] = np.sort(order[:full].reshape(-1, self.batch_size), axis=1).ravel()
        self._order = order
        self._flips = (torch.rand(self.shard_len, generator=g) < 0.5).numpy()

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cursor + self.batch_size > self.shard_len:
            self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._draw_epoch()
        sl = slice(self.cursor, self.cursor + self.batch_size)
        idx = self._order[sl]
        x = self.data.images[idx]  # one gather from the memory map (uint8)
        if self.hflip:
            flips = self._flips[sl]
            x[flips] = x[flips, ..., ::-1]
        y = torch.from_numpy(self.data.labels[idx].astype(np.int64, copy=False))
        self.cursor += self.batch_size
        # uint8 -> [-1, 1] on the GPU (4x less to copy), on CPU by numpy (torch's intra-op threads
        # cost more in synchronisation than the work on small batches).
        if self.device.type == "cuda":
            xt = torch.from_numpy(x).pin_memory().to(self.device, non_blocking=True)
            return xt.float().div_(127.5).sub_(1.0), y.pin_memory().to(self.device, non_blocking=True)
        out = np.divide(x, np.float32(127.5), dtype=np.float32)
        out -= np.float32(1.0)
        return torch.from_numpy(out).to(self.device), y.to(self.device)
