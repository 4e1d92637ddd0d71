"""Checkpoint files ``ckpt-<step:08d>.pt``: written atomically, validated on load, pruned to the last K.

A checkpoint holds everything a restarted gang needs to continue as if it had never stopped: the
model and optimizer state, where the data sampler was (epoch and step within it), and the RNG states
of every rank. It is written by rank 0 through ``atomic.atomic_write`` (temp file, fsync, rename), so
a preempted or crashed writer leaves either the previous set of checkpoints or a complete new one.
Storage can still hand back damage (a full volume, a copy cut short by hand), so a reader checks each
candidate by loading it and its required keys, newest first, and skips the bad ones with a log line.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, NotRequired, TypedDict, cast

import torch

from kubeforge.trainer.atomic import TEMP_PREFIX, TEMP_SUFFIX, atomic_write
from kubeforge.trainer.rng import RngState

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "kubeforge.checkpoint/v1"
_NAME = re.compile(r"^ckpt-(\d{8,})\.pt$")


class CheckpointState(TypedDict):
    """The contents of one checkpoint file."""

    format: str
    step: int  # optimizer steps completed
    epoch: int  # sampler epoch the next step belongs to
    step_in_epoch: int  # steps of that epoch already trained
    world_size: int
    loss: float
    time: str  # RFC 3339, UTC
    model: dict[str, Any]  # state_dict of the unwrapped model (no DDP "module." prefix)
    optimizer: dict[str, Any]
    rng: list[RngState]  # one per rank, indexed by rank
    # the newest validation ({"step", "loss", "perplexity"}), so a resumed run reports it until its next
    # one; absent from checkpoints of models without a validation set and of earlier trainers
    validation: NotRequired[dict[str, float] | None]


OPTIONAL_KEYS = frozenset({"validation"})
# spelt out: with postponed annotations, TypedDict.__required_keys__ cannot see NotRequired (Python 3.11)
REQUIRED_KEYS = frozenset(CheckpointState.__annotations__) - OPTIONAL_KEYS


class CheckpointError(Exception):
    """A checkpoint file that cannot be used: unreadable, truncated, or missing required content."""


def checkpoint_path(directory: Path, step: int) -> Path:
    """Where the checkpoint of ``step`` lives."""
    return directory / f"ckpt-{step:08d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every checkpoint file in ``directory``, oldest first; temp files are ignored."""
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def save_checkpoint(directory: Path, state: CheckpointState) -> Path:
    """Write ``state`` atomically as the checkpoint of ``state["step"]``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, state["step"])
    atomic_write(path, lambda handle: torch.save(state, handle))
    return path


def load_checkpoint(path: Path) -> CheckpointState:
    """Load and validate one checkpoint; raises ``CheckpointError`` with the reason when it is unusable."""
    try:
        # weights_only: checkpoints live on a shared volume; never unpickle arbitrary objects from it
        raw = torch.load(path, map_location="cpu", weights_only=True)
    # torch raises RuntimeError, EOFError, UnpicklingError, zipfile errors... depending on the damage
    except Exception as exc:
        raise CheckpointError(f"cannot load: {type(exc).__name__}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"expected a dict, found {type(raw).__name__}")
    missing = REQUIRED_KEYS - raw.keys()
    if missing:
        raise CheckpointError(f"missing keys: {', '.join(sorted(missing))}")
    if raw["format"] != CHECKPOINT_FORMAT:
        raise CheckpointError(f"unknown format {raw['format']!r} (expected {CHECKPOINT_FORMAT!r})")
    match = _NAME.match(path.name)
    if match and int(match.group(1)) != raw["step"]:
        raise CheckpointError(f"file name says step {int(match.group(1))}, contents say step {raw['step']}")
    if not isinstance(raw["model"], dict) or not raw["model"]:
        raise CheckpointError("model state is empty")
    return cast(CheckpointState, raw)


def load_latest_checkpoint(directory: Path) -> CheckpointState | None:
    """The newest complete checkpoint in ``directory``, skipping (and logging) corrupt or partial ones."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            log.warning("skipping corrupt or incomplete checkpoint %s (step %d): %s", path, step, exc)
            continue
        log.info("found complete checkpoint %s (step %d)", path, step)
        return state
    return None


def prune_checkpoints(directory: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints; returns the deleted paths."""
    doomed = [path for _, path in list_checkpoints(directory)[:-keep_last]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed


def remove_stale_temp_files(directory: Path) -> list[Path]:
    """Delete temp files a killed writer left behind (rank 0, the only writer, calls it before writing)."""
    if not directory.is_dir():
        return []
    stale = [
        path
        for path in directory.iterdir()
        if path.name.startswith(TEMP_PREFIX) and path.name.endswith(TEMP_SUFFIX) and path.is_file()
    ]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
