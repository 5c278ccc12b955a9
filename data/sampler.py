"""Training batch sampler whose global batches do not depend on the number of processes."""
from __future__ import annotations

from collections.abc import Iterator, Sequence

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

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 persons: Sequence[int] | None = None, instances: int = 0, max_batches: int = 0):
        """``instances`` > 0 (with ``persons``, the person index of every sample) makes
        identity-balanced batches: runs of ``instances`` samples of one person, shuffled
        as units, so every batch holds several positives per person (the usual P x K
        sampling of person re-identification). 0 keeps plain random batches (upstream).
        ``max_batches`` > 0 ends each epoch after that many global batches of the epoch's
        order (the order still covers the whole set, so later epochs reach other samples);
        0 is one full pass.
        """
        global_batch = batch_size * world_size
        self.groups: list[list[int]] | None = None
        usable = num_samples
        if instances > 0:
            if persons is None or len(persons) != num_samples:
                raise ValueError("identity-balanced batches need the person index of every sample")
            by_person: dict[int, list[int]] = {}
            for i, p in enumerate(persons):
                by_person.setdefault(int(p), []).append(i)
            self.groups = list(by_person.values())
            usable = sum(len(g) // instances * instances for g in self.groups)
        if usable < global_batch:
            kind = "samples" if instances == 0 else f"samples in complete runs of {instances} per person"
            raise ValueError(f"training set has {usable} {kind}, fewer than one global batch "
                             f"({batch_size} per process x {world_size} processes = {global_batch}); "
                             "lower data.batch_size")
        full = usable // global_batch
        if max_batches < 0 or max_batches > full:
            raise ValueError(f"schedule.steps_per_epoch is {max_batches}, but one pass over the training set "
                             f"is {full} batches; set it between 1 and {full}, or 0 for the full pass")
        self.batches = max_batches or full
        self.num_samples, self.batch_size, self.instances = num_samples, batch_size, instances
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Iterate ``epoch``'s order from global batch ``start_batch`` on (the engine passes the
        batches a resumed run already trained; ``len`` counts the remaining ones)."""
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches - self.start_batch

    def order(self, g: torch.Generator) -> list[int]:
        """This epoch's sample order (the same on every process)."""
        if self.groups is None:
            return torch.randperm(self.num_samples, generator=g).tolist()
        runs = []
        for members in self.groups:
            shuffled = [members[i] for i in torch.randperm(len(members), generator=g).tolist()]
            runs += [shuffled[s:s + self.instances] for s in range(0, len(shuffled) - self.instances + 1, self.instances)]
        return [i for r in torch.randperm(len(runs), generator=g).tolist() for i in runs[r]]

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        perm = self.order(g)
        gb = self.batch_size * self.world_size
        for b in range(self.start_batch, self.batches):  # the order holds at least self.batches global batches
            start = b * gb + self.rank * self.batch_size
            yield perm[start:start + self.batch_size]
