"""A shuffling sampler whose order depends only on ``(seed, epoch)``, so a resumed run sees the same batches.

accelerate calls ``set_epoch`` on the sampler at the start of every iteration of a prepared DataLoader (also of
the one returned by ``accelerator.skip_first_batches``), and in multi-process runs shards the batches of this
one order, so every process agrees on it without any state to save: nothing to pickle in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class EpochSeededSampler(Sampler[int]):
    """Random permutation of ``range(num_samples)`` drawn from ``seed + epoch``.

    Args:
        num_samples: dataset length.
        seed: base seed (None draws one at construction, so the order is still reproducible within the run).
        shuffle: False gives ``0..num_samples-1`` in order every epoch.
    """

    def __init__(self, num_samples: int, seed: int | None = 0, shuffle: bool = True) -> None:
        self.num_samples = int(num_samples)
        self.seed = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if not self.shuffle:
            return iter(range(self.num_samples))
        g = torch.Generator().manual_seed(self.seed + 7919 * self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples
