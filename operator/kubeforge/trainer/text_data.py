"""The language model's data: windows of a byte corpus, split into training and validation text.

The corpus ships with the package (``corpus/opticks.txt``, see its README), so training downloads
nothing. The split is by position, not by window: the last ``VALIDATION_FRACTION`` of the bytes are
never trained on, so validation loss measures text the model has not seen (overlapping windows drawn
from one pool would leak training bytes into validation).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import TensorDataset

DEFAULT_CORPUS = Path(__file__).with_name("corpus") / "opticks.txt"
VALIDATION_FRACTION = 0.1


def read_corpus(path: Path) -> torch.Tensor:
    """The file's bytes as a 1-D int64 tensor of token ids (a byte is its own token)."""
    data = path.read_bytes()
    if not data:
        raise ValueError(f"corpus {path} is empty")
    return torch.tensor(list(data), dtype=torch.int64)


def windows(tokens: torch.Tensor, context_length: int, stride: int) -> TensorDataset:
    """Inputs ``tokens[i : i + T]`` and targets ``tokens[i + 1 : i + T + 1]`` for i = 0, stride, ..."""
    if tokens.numel() < context_length + 1:
        raise ValueError(f"{tokens.numel()} bytes hold no window of {context_length} + 1")
    spans = tokens.unfold(0, context_length + 1, stride)
    return TensorDataset(spans[:, :-1].contiguous(), spans[:, 1:].contiguous())


def corpus_datasets(tokens: torch.Tensor, context_length: int) -> tuple[TensorDataset, TensorDataset]:
    """(training, validation) windows: half-overlapping over the first 90%, disjoint over the rest."""
    split = int(tokens.numel() * (1 - VALIDATION_FRACTION))
    # half-overlapping training windows: each byte is learnt in two contexts per epoch
    training = windows(tokens[:split], context_length, max(1, context_length // 2))
    validation = windows(tokens[split:], context_length, context_length)
    return training, validation
