"""Length-grouped sampling by modality, like LLaVA's `group_by_modality_length`.

Image and text-only samples never share a batch (apart from one final mixed batch of leftovers), and
samples of similar length share batches, so padding is small. The order depends only on
(seed, epoch), which is what makes resume reproduce an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def _grouped_batches(indices: list[int], lengths: list[int], batch_size: int, generator: torch.Generator):
    order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    megabatch = batch_size * 8  # sort within windows so batches stay random across the epoch
    batches = []
    for start in range(0, len(order), megabatch):
        window = sorted(order[start : start + megabatch], key=lambda i: abs(lengths[i]), reverse=True)
        batches.extend(window[i : i + batch_size] for i in range(0, len(window), batch_size))
    return batches


class ModalityLengthGroupedSampler(Sampler[int]):
    """Yields indices so that each consecutive `batch_size` chunk has one modality and similar lengths.

    `lengths` are positive for samples with an image and negative for text-only ones.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, group: bool = True) -> None:
        self.lengths = lengths
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order `__iter__` yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if not self.group:
            yield from torch.randperm(len(self.lengths), generator=generator).tolist()
            return
        full, leftovers = [], []
        for modality in (True, False):
            indices = [i for i, length in enumerate(self.lengths) if (length > 0) == modality]
            for batch in _grouped_batches(indices, self.lengths, self.batch_size, generator):
                (full if len(batch) == self.batch_size else leftovers).append(batch)
        batches = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        if leftovers:
            batches.append([i for batch in leftovers for i in batch])
        for batch in batches:
            yield from batch
