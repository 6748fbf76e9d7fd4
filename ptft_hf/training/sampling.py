"""Length-grouped training order with shuffled batches.

transformers' `LengthGroupedSampler` sorts within megabatches of 50 batches and then serves each
megabatch's batches longest first. Larger megabatches leave less padding (more texts to pair
with one of similar length), but in that sampler they would also turn every megabatch into a
long-to-short sweep. Here the batches are cut from the sorted megabatches and then shuffled, so
the megabatch can be large (less padding) while the order of lengths stays random. As in
transformers, the batch holding the longest example goes first (an out-of-memory error shows at
step one). The order depends only on `seed` and the epoch (`set_epoch`, which the Trainer and
accelerate call), so every process of a distributed run builds the same order, and a resumed run
rebuilds the order it is skipping into.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def length_grouped_batches(lengths: Sequence[int], batch_size: int, megabatch_batches: int,
                           generator: torch.Generator | None = None) -> list[list[int]]:
    """Batches of indices: a random permutation cut into megabatches of `megabatch_batches` batches,
    each sorted by length (longest first) and cut into batches; the batches then shuffled, with the
    one holding the longest example first and a short last batch (if any) kept last."""
    if batch_size < 1 or megabatch_batches < 1:
        raise ValueError(f"batch_size and megabatch_batches must be >= 1, got {batch_size} and {megabatch_batches}")
    order = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch = batch_size * megabatch_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), megabatch):
        group = sorted(order[start : start + megabatch], key=lambda i: lengths[i], reverse=True)
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    if not batches:
        return []
    short = batches.pop() if len(batches[-1]) < batch_size else None  # a partial batch would shift every later one
    batches = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    if batches:
        longest = max(range(len(batches)), key=lambda b: lengths[batches[b][0]])
        batches[0], batches[longest] = batches[longest], batches[0]
    return batches + ([short] if short else [])


class ShuffledLengthGroupedSampler(Sampler[int]):
    """Indices in `length_grouped_batches` order, flattened for the Trainer's DataLoader, which cuts
    them back into the same batches (its batch size must be `batch_size`, or `batch_size / N` for N processes, each dealt
    consecutive slices)."""

    def __init__(self, lengths: Sequence[int], batch_size: int, megabatch_batches: int, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.megabatch_batches = megabatch_batches
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        batches = length_grouped_batches(self.lengths, self.batch_size, self.megabatch_batches, generator)
        return iter([i for batch in batches for i in batch])
