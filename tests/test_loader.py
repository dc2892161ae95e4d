"""BatchLoader: values, flips, DDP shards, per-epoch seeding, exact resume.

Throughput (the 20,000 images/s target) is measured by benchmarks/prepare_and_load.py, not here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sagan_core.data.dataset import BatchLoader, PreparedData

pytestmark = pytest.mark.unit


def fake_data(n: int, res: int = 8, channels: int = 3) -> PreparedData:
    """Image i is filled with a value derived from i and carries label i: batches reveal indices."""
    images = np.empty((n, channels, res, res), dtype=np.uint8)
    images[:] = (np.arange(n) % 200).astype(np.uint8)[:, None, None, None]
    images[:, :, :, 0] = 255  # a marker column on the left edge, to see flips
    return PreparedData(images, np.arange(n, dtype=np.int64), {"num_classes": 0})


def indices(loader: BatchLoader, batches: int) -> list[np.ndarray]:
    return [next(loader)[1].numpy() for _ in range(batches)]


def test_values_range_and_labels_match_images():
    data = fake_data(100)
    x, y = next(BatchLoader(data, 16, seed=0))
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape == (16, 3, 8, 8)
    expected = torch.from_numpy(data.images[y.numpy()]).float() / 127.5 - 1
    assert torch.equal(x, expected)
    assert x.min() >= -1 and x.max() <= 1


def test_hflip_flips_about_half_and_only_horizontally():
    data = fake_data(512)
    loader = BatchLoader(data, 256, seed=1, hflip=True)
    flipped = 0
    for _ in range(2):
        x, y = next(loader)
        original = torch.from_numpy(data.images[y.numpy()]).float() / 127.5 - 1
        is_flipped = torch.tensor([torch.equal(a, b.flip(-1)) for a, b in zip(x, original)])
        is_same = torch.tensor([torch.equal(a, b) for a, b in zip(x, original)])
        assert torch.all(is_flipped ^ is_same)  # each image is either untouched or mirrored
        flipped += int(is_flipped.sum())
    assert 150 < flipped < 362  # ~Binomial(512, 0.5)


def test_ddp_shards_are_disjoint_and_cover_the_epoch():
    data, world, bs = fake_data(103), 3, 5
    loaders = [BatchLoader(data, bs, seed=7, rank=r, world_size=world) for r in range(world)]
    per_rank = [np.concatenate(indices(ld, ld.batches_per_epoch)) for ld in loaders]
    all_idx = np.concatenate(per_rank)
    assert len(set(all_idx.tolist())) == len(all_idx)  # disjoint, no repeats within an epoch
    assert all(len(p) == (103 // world // bs) * bs for p in per_rank)


def test_each_epoch_is_a_new_permutation_and_seeds_differ():
    data = fake_data(64)
    ld = BatchLoader(data, 16, seed=0)
    e0, e1 = np.concatenate(indices(ld, 4)), np.concatenate(indices(ld, 4))
    assert sorted(e0) == sorted(e1) == list(range(64)) and not np.array_equal(e0, e1)
    other = np.concatenate(indices(BatchLoader(data, 16, seed=1), 4))
    assert not np.array_equal(e0, other)


def test_resume_from_state_dict_continues_identically():
    data = fake_data(50)
    a = BatchLoader(data, 8, seed=3, hflip=True)
    for _ in range(9):  # into the second epoch (6 batches per epoch)
        next(a)
    b = BatchLoader(data, 8, seed=3, hflip=True)
    b.load_state_dict(a.state_dict())
    for _ in range(10):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batch_larger_than_shard_is_a_config_error():
    from sagan_core.errors import ConfigError

    with pytest.raises(ConfigError, match="train.batch_size"):
        BatchLoader(fake_data(10), 8, seed=0, world_size=2)
