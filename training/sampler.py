"""Sample ids for the training loop: a rank-strided global batch sampler and an epoch shuffler.

The loop numbers training samples globally: step ``s`` consumes the ids
``s * B * W ... (s + 1) * B * W - 1`` (``B`` samples per rank, ``W`` ranks) and rank ``r`` takes
the ``r``-th block of ``B``. A dataset maps a sample id to an item deterministically (e.g.
:class:`comostream.training.dataset.SegmentDataset` seeds each item from its id), so the data
position after ``s`` steps is ``s`` itself: resuming at step ``s`` replays exactly the same batches,
and ``W`` ranks with ``B`` each see the same samples as one process with ``B * W``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
from torch.utils.data import Dataset, Sampler

__all__ = ["EpochShuffle", "GlobalBatchSampler", "SizedDataset"]


class SizedDataset(Protocol):
    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> Any: ...


class GlobalBatchSampler(Sampler[list[int]]):
    """Endless batches of global sample ids for one rank, starting at step ``start_step``."""

    def __init__(self, batch_size: int, start_step: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size < 1 or not 0 <= rank < world_size or start_step < 0:
            raise ValueError("need batch_size >= 1, 0 <= rank < world_size, start_step >= 0")
        self.batch_size, self.start_step = batch_size, start_step
        self.rank, self.world_size = rank, world_size

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            first = (step * self.world_size + self.rank) * self.batch_size
            yield list(range(first, first + self.batch_size))
            step += 1


class EpochShuffle(Dataset[Any]):
    """Adapt a finite dataset to sample ids: id ``k`` is item ``perm_e[k % n]`` of epoch ``k // n``.

    Each epoch visits every item once in an order seeded by ``(seed, epoch)``.
    """

    def __init__(self, dataset: SizedDataset, seed: int = 0) -> None:
        if len(dataset) == 0:
            raise ValueError("EpochShuffle: the dataset is empty")
        self.dataset, self.seed = dataset, seed
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, sample_id: int) -> Any:
        epoch, i = divmod(int(sample_id), len(self.dataset))
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._perm = epoch, rng.permutation(len(self.dataset))
        return self.dataset[int(self._perm[i])]
