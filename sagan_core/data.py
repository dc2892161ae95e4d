"""The prepared dataset on disk and the training loader that reads it.

Prepared layout (`data.prepared_dir`):
  images.npy     uint8 N x C x H x W (np.save format: memory-mappable with np.load(mmap_mode="r"))
  labels.npy     int64 N (all 0 for an unconditional dataset)
  manifest.json  num_images, num_classes, class_names, resolution, channels, content_hash, rejected, ...

The loader is deliberately not a torch DataLoader: batches are fancy-indexed out of the memory map
in the main process (tens of thousands of small images per second), so there are no worker
processes to seed, and its whole state is (epoch, cursor) -- which is what makes resume exact and
DDP sharding trivial.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import ConfigError, SaganError


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


def open_prepared(directory: str | Path) -> PreparedData:
    directory = Path(directory)
    manifest_path = directory / "manifest.json"
    if not manifest_path.exists():
        raise ConfigError(f"{directory}: no prepared dataset (run `sagan prepare` first)")
    manifest = json.loads(manifest_path.read_text())
    try:
        images = np.load(directory / "images.npy", mmap_mode="r")
        labels = np.load(directory / "labels.npy")
    except (OSError, ValueError) as e:
        raise SaganError(
            f"{directory}: prepared dataset is damaged ({e}); run `sagan prepare` again"
        ) from None
    if images.ndim != 4 or images.dtype != np.uint8 or len(labels) != len(images):
        raise SaganError(f"{directory}: prepared dataset is inconsistent; run `sagan prepare` again")
    return PreparedData(images, labels, manifest)


class BatchLoader:
    """Endless shuffled batches as float tensors in [-1, 1] on `device`, with optional h-flips.

    Epoch e uses the permutation drawn from a generator seeded with (seed, e); rank r of w takes
    every w-th index of it (disjoint shards of equal length). Incomplete final batches are dropped.
    """

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
        self._flips: torch.Tensor | None = None

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
        self._order = perm[self.rank :: self.world_size].numpy()
        self._flips = torch.rand(self.shard_len, generator=g) < 0.5

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cursor + self.batch_size > self.shard_len:
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = None
        if self._order is None:
            self._draw_epoch()
        sl = slice(self.cursor, self.cursor + self.batch_size)
        idx = self._order[sl]
        order = np.argsort(idx)  # read the memory map in ascending order, then restore batch order
        x = torch.empty((len(idx), *self.data.images.shape[1:]), dtype=torch.uint8)
        x[torch.from_numpy(order)] = torch.from_numpy(self.data.images[idx[order]])
        y = torch.from_numpy(self.data.labels[idx].astype(np.int64))
        if self.device.type == "cuda":
            x, y = x.pin_memory(), y.pin_memory()
        x = x.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        y = y.to(self.device, non_blocking=True)
        if self.hflip:
            flips = self._flips[sl].to(self.device, non_blocking=True)
            x = torch.where(flips[:, None, None, None], x.flip(-1), x)
        self.cursor += self.batch_size
        return x, y
