"""Token-budget packing sampler: groups images into training steps, seeded per epoch, resumable.

An epoch's plan is a list of global steps. Each global step holds ``world_size * accumulate``
chunks; a chunk is the list of dataset indices one process packs into one forward pass. Chunks
are cut from a permutation of the dataset (seeded by ``(seed, epoch)``) greedily: images join the
current chunk while its token count stays within ``tokens_per_step``; an image larger than the
budget forms its own chunk. ``tokens_per_step`` of ``None`` or 0 means one image per chunk (the
reference recipe: one image per step per GPU). Rank ``r`` runs chunks ``r*accumulate ..
(r+1)*accumulate - 1`` of every global step, so a 1-process run with ``accumulate = k`` computes the
same global steps as ``k`` processes with ``accumulate = 1``.

The plan depends only on ``(tokens, seed, epoch, tokens_per_step, world_size * accumulate)``, so a
resumed run rebuilds it and continues at a step index.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ..errors import UserError


def pack_chunks(order: Sequence[int], tokens: Sequence[int], budget: int | None) -> list[list[int]]:
    """Greedy packing of ``order`` (dataset indices) into chunks of at most ``budget`` tokens."""
    if not budget:
        return [[i] for i in order]
    chunks: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        n = int(tokens[i])
        if current and used + n > budget:
            chunks.append(current)
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        chunks.append(current)
    return chunks


class PackingSampler:
    """Builds epoch plans. ``tokens[i]``: token count of dataset item ``i`` (grid ``h*w``)."""

    def __init__(self, tokens: Sequence[int], tokens_per_step: int | None = None, seed: int = 0,
                 world_size: int = 1, accumulate: int = 1):
        if len(tokens) == 0:
            raise UserError("the feature store holds no images to train on")
        if tokens_per_step is not None and tokens_per_step < 0:
            raise UserError(f"tokens_per_step must be >= 0, got {tokens_per_step}")
        if accumulate < 1:
            raise UserError(f"accumulate must be >= 1, got {accumulate}")
        self.tokens = [int(t) for t in tokens]
        self.tokens_per_step = tokens_per_step or None
        self.seed = int(seed)
        self.world_size = int(world_size)
        self.accumulate = int(accumulate)

    @property
    def chunks_per_step(self) -> int:
        return self.world_size * self.accumulate

    def epoch_plan(self, epoch: int) -> list[list[list[int]]]:
        """Global steps of ``epoch``: ``plan[step][chunk] -> list of dataset indices``.

        The last global step may hold fewer chunks (even fewer than ``world_size``; ranks
        without a chunk contribute no gradient)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.tokens), generator=g).tolist()
        chunks = pack_chunks(order, self.tokens, self.tokens_per_step)
        k = self.chunks_per_step
        return [chunks[i:i + k] for i in range(0, len(chunks), k)]

    def rank_chunks(self, step: list[list[int]], rank: int) -> list[list[int]]:
        """The chunks of global ``step`` that process ``rank`` runs (possibly none)."""
        return step[rank * self.accumulate:(rank + 1) * self.accumulate]

    def rank_batches(self, epoch: int, rank: int, start_step: int = 0) -> Iterator[list[int]]:
        """Flat stream of ``rank``'s chunks from ``start_step`` on (a DataLoader ``batch_sampler``)."""
        for step in self.epoch_plan(epoch)[start_step:]:
            yield from self.rank_chunks(step, rank)
