"""Training batch sampler whose global batches do not depend on the number of processes."""
from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[list[int]]):
    """Shuffle once per (seed, epoch), cut into global batches, give each rank its slice.

    Global batch g is ``perm[g*B*W:(g+1)*B*W]`` and rank r takes rows ``[r*B:(r+1)*B]`` of
    it, so one process with batch ``B*W`` sees exactly the union of what W processes with
    batch B see, step by step. That makes single- and multi-process runs comparable and
    resumption exact (``start_batch`` skips the batches already trained). The last,
    incomplete global batch is dropped so every process runs the same number of steps.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        global_batch = batch_size * world_size
        if num_samples < global_batch:
            raise ValueError(f"training set has {num_samples} samples, fewer than one global batch "
                             f"({batch_size} per process x {world_size} processes = {global_batch}); "
                             "lower data.batch_size")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.num_samples // (self.batch_size * self.world_size) - self.start_batch

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = torch.randperm(self.num_samples, generator=g).tolist()
        gb = self.batch_size * self.world_size
        for b in range(self.start_batch, self.num_samples // gb):
            start = b * gb + self.rank * self.batch_size
            yield perm[start:start + self.batch_size]
