"""Small reference models, and loading a model class from ``module.path:ClassName``.

A trainable model is a ``torch.nn.Module`` whose constructor takes no required arguments and that
declares what it consumes and produces, so the trainer can build the synthetic dataset and the
exported Triton config from it:

- ``input_shape``: the shape of one sample, without the batch dimension, e.g. ``(16,)`` or ``(1, 8, 8)``;
- ``num_classes``: the number of logits it returns per sample.

A causal language model declares ``vocab_size`` and ``context_length`` instead
(``language_model.LanguageModel``); the trainer then learns a text corpus with it.
"""

from __future__ import annotations

import hashlib
import importlib
from typing import Protocol, cast, runtime_checkable

import torch
from torch import nn

from kubeforge.trainer.language_model import LanguageModel


@runtime_checkable
class TrainableModel(Protocol):
    """What the trainer needs from a model besides being an ``nn.Module``."""

    input_shape: tuple[int, ...]
    num_classes: int


class MLP(nn.Module):
    """A two-layer perceptron over flat feature vectors."""

    def __init__(self, in_features: int = 16, hidden: int = 32, num_classes: int = 4) -> None:
        super().__init__()
        self.input_shape: tuple[int, ...] = (in_features,)
        self.num_classes = num_classes
        self.layers = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.layers(x))


class SmallCNN(nn.Module):
    """A tiny convolutional classifier over one-channel ``side`` x ``side`` images."""

    def __init__(self, channels: int = 8, side: int = 8, num_classes: int = 4) -> None:
        super().__init__()
        self.input_shape: tuple[int, ...] = (1, side, side)
        self.num_classes = num_classes
        # no pooling: on inputs this small it throws away what the (linear) synthetic labels depend on
        self.features = nn.Sequential(nn.Conv2d(1, channels, kernel_size=3, padding=1), nn.ReLU())
        self.head = nn.Linear(channels * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.head(torch.flatten(self.features(x), 1)))


class ModelSpecError(ValueError):
    """The ``--model`` value does not name a usable model class."""


def build_model(spec: str) -> nn.Module:
    """Import ``module.path:ClassName``, instantiate it without arguments, and check it is trainable."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ModelSpecError(f"model {spec!r}: expected module.path:ClassName")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelSpecError(f"model {spec!r}: cannot import {module_name}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ModelSpecError(f"model {spec!r}: {module_name} has no attribute {class_name}")
    model = cls()
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"model {spec!r}: {class_name} is not a torch.nn.Module")
    if not isinstance(model, (TrainableModel, LanguageModel)):
        raise ModelSpecError(
            f"model {spec!r}: {class_name} must define input_shape and num_classes (a classifier) "
            "or vocab_size and context_length (a language model)"
        )
    return model


def model_signature(model: nn.Module) -> tuple[tuple[int, ...], int]:
    """``(input_shape, num_classes)`` of a model that ``build_model`` accepted."""
    trainable = cast(TrainableModel, model)
    return tuple(trainable.input_shape), int(trainable.num_classes)


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 of the model's state (names and exact bytes): equal digests mean bit-identical models."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
