"""Seeding, and RNG states as plain data that a checkpoint loaded with ``weights_only=True`` can hold."""

from __future__ import annotations

import random
from typing import Any, cast

import numpy as np
import torch

RngState = dict[str, Any]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's legacy global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> RngState:
    """This process's RNG states, made only of tensors, ints, floats, strings, tuples and None."""
    state: RngState = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    # the global RandomState is always MT19937, whose legacy state is the 5-tuple
    legacy = cast(tuple[str, np.ndarray[Any, Any], int, int, float], np.random.get_state(legacy=True))
    kind, keys, pos, has_gauss, gauss = legacy
    # the key array as a tensor: torch.load(weights_only=True) refuses numpy arrays
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    return state


def restore_rng_state(state: RngState) -> None:
    """Put back what ``capture_rng_state`` returned (CUDA states are skipped on a CPU-only machine)."""
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
