"""The batch loader (mimmo.data.loader): coverage, determinism, streams, processes, refusals."""

from __future__ import annotations

import pytest
import torch

from mimmo.data.datasets import ImageSet
from mimmo.data.loader import BatchLoader


def test_batch_loader_covers_every_sample_once_per_epoch():
    loader = BatchLoader(indexed_set(103), 10, shuffle=True, seed=3)
    assert len(loader) == 10
    for epoch in range(3):
        order = epoch_order(loader, epoch)
        assert order.shape == (100,)
        assert len(torch.unique(order)) == 100  # every sample at most once; only the remainder of 3 dropped


def test_batch_loader_is_deterministic_per_seed_and_epoch():
    data = indexed_set(103)
    first = epoch_order(BatchLoader(data, 10, shuffle=True, seed=3), 0)
    again = BatchLoader(data, 10, shuffle=True, seed=3)
    assert torch.equal(epoch_order(again, 0), first)
    assert not torch.equal(epoch_order(again, 1), first)  # another epoch, another order
    assert torch.equal(epoch_order(again, 0), first)
    assert not torch.equal(epoch_order(BatchLoader(data, 10, shuffle=True, seed=4), 0), first)


def test_batch_loader_streams_are_independent_orders():
    loader = BatchLoader(indexed_set(103), 10, shuffle=True, seed=3, streams=3)
    loader.sampler.set_epoch(0)
    batches = list(loader)
    assert len(batches) == 10
    images, labels = batches[0]
    assert images.shape == (10, 3, 1, 2, 2) and labels.shape == (10, 3)
    orders = torch.cat([y for _, y in batches])  # (100, 3)
    for s in range(3):
        assert len(torch.unique(orders[:, s])) == 100
        assert torch.equal(torch.cat([x for x, _ in batches])[:, s, 0, 0, 0].long(), orders[:, s])
    assert not torch.equal(orders[:, 0], orders[:, 1]) and not torch.equal(orders[:, 1], orders[:, 2])
    # an independent order agrees with another in about 1 of 103 positions, not in most of them
    assert int((orders[:, 0] == orders[:, 1]).sum()) < 10


def test_batch_loader_in_evaluation_order_keeps_every_sample():
    loader = BatchLoader(indexed_set(103), 10, shuffle=False)
    assert len(loader) == 11
    assert torch.equal(torch.cat([y for _, y in loader]), torch.arange(103))


def test_batch_loader_splits_batches_between_processes():
    data = indexed_set(103)
    loaders = [BatchLoader(data, 10, shuffle=True, seed=3, rank=r, world_size=2) for r in (0, 1)]
    assert [len(loader) for loader in loaders] == [10, 10]  # as many steps as one process
    parts = [epoch_order(loader, 0) for loader in loaders]
    assert all(len(p) == 50 for p in parts)  # each takes half of every batch of 10
    assert len(torch.unique(torch.cat(parts))) == 100
    whole = epoch_order(BatchLoader(data, 10, shuffle=True, seed=3), 0)
    assert torch.equal(torch.sort(torch.cat(parts)).values, torch.sort(whole).values)
    with pytest.raises(ValueError, match=r"train.batch_size \(10\) must be divisible by the number of processes \(3\)"):
        BatchLoader(data, 10, shuffle=True, rank=0, world_size=3)


def test_batch_loader_refuses_bad_sizes():
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        BatchLoader(indexed_set(5), 0, shuffle=False)
    with pytest.raises(ValueError, match="batch_size 8 exceeds the 5 training samples"):
        BatchLoader(indexed_set(5), 8, shuffle=True)


def indexed_set(size: int) -> ImageSet:
    """Image j is the constant j (uint8), label j: a batch shows which samples it holds."""
    images = torch.arange(size, dtype=torch.uint8)[:, None, None, None].expand(size, 1, 2, 2).clone()
    return ImageSet(images, torch.arange(size))


def epoch_order(loader: BatchLoader, epoch: int) -> torch.Tensor:
    loader.sampler.set_epoch(epoch)
    batches = []
    for images, labels in loader:
        assert torch.equal(images[..., 0, 0, 0].long(), labels)  # images follow their labels
        batches.append(labels)
    return torch.cat(batches)
