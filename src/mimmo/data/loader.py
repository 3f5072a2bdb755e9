"""Batches of in-memory tensors by indexing (no per-sample Python), deterministic per (seed, epoch)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from mimmo.data.datasets import ImageSet


class EpochSampler:
    """Holds the epoch index; Lightning calls ``set_epoch`` on a loader's ``sampler`` before each epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class BatchLoader:
    """Yields (images uint8, labels) batches of an :class:`ImageSet`.

    Training (``shuffle=True``): each epoch draws ``streams`` independent permutations from
    (seed, epoch); with ``streams`` > 1 a batch is (B, S, C, H, W) with labels (B, S), stream s being its
    own shuffle of the whole set (the Deep Ensemble's members each get their own data order). The last
    incomplete batch is dropped. Under data parallelism each of ``world_size`` processes takes every
    ``world_size``-th batch. Evaluation (``shuffle=False``): the set in order, every sample once.
    """

    def __init__(self, data: ImageSet, batch_size: int, shuffle: bool, seed: int = 0, streams: int = 1,
                 rank: int = 0, world_size: int = 1) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if shuffle and batch_size > len(data):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(data)} training samples")
        if shuffle and batch_size % world_size:
            raise ValueError(f"train.batch_size ({batch_size}) must be divisible by the number of processes "
                             f"({world_size}): each takes an equal share of every batch")
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.streams, self.rank, self.world_size = streams, rank, world_size
        self.sampler = EpochSampler()
        self.batch_sampler = None  # Lightning inspects loaders for one

    def __len__(self) -> int:
        if self.shuffle:
            return len(self.data) // self.batch_size
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if not self.shuffle:
            for start in range(0, len(self.data), self.batch_size):
                yield self.data.images[start:start + self.batch_size], self.data.labels[start:start + self.batch_size]
            return
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.sampler.epoch)
        order = torch.stack([torch.randperm(len(self.data), generator=generator) for _ in range(self.streams)], 1)
        order = order.to(self.data.images.device)  # the same order, drawn on the CPU, wherever the data lives
        for batch in range(len(self)):
            index = order[batch * self.batch_size:(batch + 1) * self.batch_size][self.rank::self.world_size]
            if self.streams == 1:
                index = index[:, 0]
            yield self.data.images[index], self.data.labels[index]
