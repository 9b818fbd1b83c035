"""A training sampler that can resume part-way through its index stream."""

import itertools

from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler"]


class ResumableTrainingSampler(TrainingSampler):
    """Detectron2's :class:`TrainingSampler` (an infinite, seeded stream of shuffled indices,
    dealt round-robin to the processes) that skips the first ``start_index`` indices of the
    global stream.

    After ``k`` finished iterations at a global batch of ``B`` images, ``start_index = k * B``
    gives exactly the batches an uninterrupted run would draw next, provided batches take
    consecutive indices (``aspect_ratio_grouping=False``: grouping keeps leftovers in
    per-aspect buckets, which a restart loses) and, with several loader workers, the batch
    interleaving does not change (tests use ``num_workers=0``). The seed must be the same as in
    the first run (set ``train.seed``).
    """

    def __init__(self, size: int, shuffle: bool = True, seed=None, start_index: int = 0):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start_index = int(start_index)

    def __iter__(self):
        start = self.start_index + self._rank
        yield from itertools.islice(self._infinite_indices(), start, None, self._world_size)
