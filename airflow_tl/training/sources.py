"""Batch sources for the epoch loop: images streamed from S3, or cached feature tensors."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from airflow_tl.data.loader import ImageStream


class ImageBatches:
    """Training and validation batches streamed from an S3 image dataset.

    With ``shard=(rank, size)`` only this rank's slice of every global batch is read and yielded (one batch per
    global batch, possibly empty); ``train_size`` stays the whole split's, which the schedule is counted in.
    """

    def __init__(self, stream: ImageStream, *, seed: int, augment: bool, shard: tuple[int, int] | None = None) -> None:
        self.stream = stream
        self.seed = seed
        self.augment = augment
        self.shard = shard
        self.train_size = len(stream.dataset.split("train"))

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.stream.batches(
            "train", shuffle=True, seed=self.seed, epoch=epoch, augment=self.augment, shard=self.shard
        )
        for batch in batches:
            yield batch.x, batch.y

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.stream.batches("val", shard=self.shard):
            yield batch.x, batch.y


class TensorBatches:
    """Batches of in-memory tensors (features of a frozen backbone), reshuffled each epoch, seeded."""

    def __init__(
        self,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        *,
        batch_size: int,
        seed: int,
    ) -> None:
        self.train, self.val = train, val
        self.batch_size = batch_size
        self.seed = seed
        self.train_size = len(train[1])

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(self.train_size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        for index in order.split(self.batch_size):
            yield self.train[0][index], self.train[1][index]

    def val_batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(self.val[1]), self.batch_size):
            yield self.val[0][start : start + self.batch_size], self.val[1][start : start + self.batch_size]
