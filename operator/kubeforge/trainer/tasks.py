"""What a model learns, chosen by the kind of model: the datasets and how a batch is scored.

A classifier (``input_shape``/``num_classes``) learns the synthetic teacher task and has no
validation set; a language model (``vocab_size``/``context_length``) learns the byte corpus and is
validated on its held-out tail. Both are scored with cross-entropy over their last dimension, so the
training loop does not care which one it trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from kubeforge.trainer.config import TrainerConfig
from kubeforge.trainer.data import synthetic_classification
from kubeforge.trainer.language_model import LanguageModel
from kubeforge.trainer.models import model_signature
from kubeforge.trainer.text_data import corpus_datasets, read_corpus

TaskKind = Literal["classification", "language-model"]


@dataclass(frozen=True)
class Task:
    """The data of one training run; identical on every rank (a pure function of the config)."""

    kind: TaskKind
    training: TensorDataset
    validation: TensorDataset | None


def task_for(model: nn.Module, config: TrainerConfig) -> Task:
    """The task ``model`` is trained on (``build_model`` accepted it, so it is one of the two kinds)."""
    if isinstance(model, LanguageModel):
        training, validation = corpus_datasets(read_corpus(config.corpus), model.context_length)
        return Task("language-model", training, validation)
    input_shape, num_classes = model_signature(model)
    # the dataset seed is the run's seed on every rank: all ranks must index the same samples
    training = synthetic_classification(config.dataset_size, input_shape, num_classes, config.seed)
    return Task("classification", training, None)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``(..., classes)`` logits against ``(...)`` targets: per sample, or per position."""
    return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), reduction=reduction)


def validation_loss(
    model: nn.Module,
    validation: TensorDataset,
    rank: int,
    world_size: int,
    batch_size: int,
    device: torch.device,
) -> float:
    """Mean cross-entropy per target over the whole validation set, each rank scoring every world_size-th sample.

    A collective: every rank calls it at the same step. It reads the parameters and nothing else (no
    RNG, no gradient, eval mode only for its duration), so evaluating does not change what training
    computes: a resumed run stays bit-identical to an uninterrupted one.
    """
    inputs, targets = validation.tensors
    mine = torch.arange(rank, inputs.shape[0], world_size)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # sum of losses, number of targets
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, mine.numel(), batch_size):
                batch = mine[start : start + batch_size]
                logits = model(inputs[batch].to(device))
                batch_targets = targets[batch].to(device)
                totals[0] += cross_entropy(logits, batch_targets, reduction="sum").double()
                totals[1] += batch_targets.numel()
    finally:
        model.train(was_training)
    dist.all_reduce(totals)
    return float(totals[0] / totals[1])
