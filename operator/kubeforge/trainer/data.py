"""The synthetic dataset the reference trainer learns, and a DistributedSampler that can resume mid-epoch.

The dataset ships with the package (no downloads) and is a pure function of its seed, so every rank
and every restart sees the same samples: Gaussian inputs labelled by a random linear "teacher"
(``argmax(x @ W)``), a task any of the reference models can learn to near-zero loss in a few dozen steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler, TensorDataset


def synthetic_classification(
    size: int, input_shape: tuple[int, ...], num_classes: int, seed: int
) -> TensorDataset:
    """``size`` samples of shape ``input_shape`` (float32) with integer labels in ``[0, num_classes)``."""
    # A private generator: building the dataset must not move the global RNG, whose state is checkpointed.
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn((size, *input_shape), generator=generator)
    teacher = torch.randn((math.prod(input_shape), num_classes), generator=generator)
    labels = (inputs.flatten(1) @ teacher).argmax(dim=1)
    return TensorDataset(inputs, labels)


class ResumableDistributedSampler(DistributedSampler[int]):
    """A ``DistributedSampler`` that can skip the samples of the batches already trained this epoch.

    Skipping happens on indices, before any sample is loaded, so resuming late in a large epoch costs
    nothing. The order of the remaining indices is exactly that of an uninterrupted epoch.
    """

    def __init__(self, dataset: TensorDataset, num_replicas: int, rank: int, seed: int) -> None:
        # drop_last: every rank gets the same number of samples without padding duplicates, so all
        # ranks run the same number of steps per epoch and their collectives stay paired.
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.start_index = 0

    def set_position(self, epoch: int, start_index: int = 0) -> None:
        """Start ``epoch`` at this rank's ``start_index``-th sample (0 for a whole epoch)."""
        self.set_epoch(epoch)
        self.start_index = start_index

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start_index :])

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def batches_per_epoch(sampler: ResumableDistributedSampler, batch_size: int) -> int:
    """Full batches each rank trains per epoch (the last partial batch is dropped)."""
    return sampler.num_samples // batch_size
