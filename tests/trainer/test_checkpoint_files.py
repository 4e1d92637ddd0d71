"""Checkpoint files: atomic writes, pruning, and skipping a corrupt or partial newest checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from kubeforge.trainer.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointError,
    CheckpointState,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    prune_checkpoints,
    remove_stale_temp_files,
    save_checkpoint,
)
from kubeforge.trainer.rng import capture_rng_state
from tests.trainer.runs import run, single_process_argv

pytestmark = pytest.mark.torch


def _state(step: int) -> CheckpointState:
    return {
        "format": CHECKPOINT_FORMAT,
        "step": step,
        "epoch": 0,
        "step_in_epoch": step,
        "world_size": 1,
        "loss": 1.0 / step,
        "time": "2026-01-01T00:00:00Z",
        "model": {"weight": torch.full((2, 2), float(step))},
        "optimizer": {"state": {}, "param_groups": []},
        "rng": [capture_rng_state()],
    }


def test_saved_checkpoint_round_trips(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _state(10))
    assert path == tmp_path / "ckpt-00000010.pt"
    loaded = load_checkpoint(path)
    assert loaded["step"] == 10
    assert torch.equal(loaded["model"]["weight"], torch.full((2, 2), 10.0))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt-00000010.pt"]  # the temp file was renamed away


def test_truncated_newest_is_skipped_for_the_previous_complete_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_checkpoint(tmp_path, _state(10))
    newest = save_checkpoint(tmp_path, _state(20))
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a copy cut short

    with caplog.at_level(logging.INFO, logger="kubeforge.trainer.checkpoint"):
        state = load_latest_checkpoint(tmp_path)

    assert state is not None and state["step"] == 10
    assert f"skipping corrupt or incomplete checkpoint {newest} (step 20)" in caplog.text


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "cannot load"),
        (b"not a zip archive", "cannot load"),
        ({"format": CHECKPOINT_FORMAT, "step": 30}, "missing keys"),
        ({**_state(30), "format": "someone-else/v9"}, "unknown format"),
        (_state(31), "contents say step 31"),
    ],
    ids=["empty", "garbage", "missing-keys", "foreign-format", "wrong-step"],
)
def test_unusable_checkpoints_are_rejected_with_a_reason(
    tmp_path: Path, content: object, reason: str
) -> None:
    path = tmp_path / "ckpt-00000030.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=reason):
        load_checkpoint(path)


def test_temp_files_of_a_killed_writer_are_ignored_and_cleaned(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(10))
    partial = tmp_path / ".ckpt-00000020.pt.4242.tmp"
    partial.write_bytes(b"half a checkpoint")
    assert [step for step, _ in list_checkpoints(tmp_path)] == [10]
    assert remove_stale_temp_files(tmp_path) == [partial]
    assert not partial.exists()


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for step in (5, 10, 15, 20):
        save_checkpoint(tmp_path, _state(step))
    removed = prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in removed] == ["ckpt-00000005.pt", "ckpt-00000010.pt"]
    assert [step for step, _ in list_checkpoints(tmp_path)] == [15, 20]


def test_trainer_resumes_from_the_previous_checkpoint_when_the_newest_is_corrupt(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    common = ["--batch-size", "16", "--dataset-size", "256", "--checkpoint-every", "10", "--log-every", "10"]
    args = [*common, "--checkpoint-dir", str(checkpoints)]
    first = run(single_process_argv([*args, "--steps", "20"]), tmp_path / "first.log")
    assert first.returncode == 0, first.output
    newest = checkpoints / "ckpt-00000020.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # partial: the volume filled up mid-copy

    second = run(single_process_argv([*args, "--steps", "30"]), tmp_path / "second.log")
    assert second.returncode == 0, second.output
    assert f"skipping corrupt or incomplete checkpoint {newest} (step 20)" in second.output
    assert f"resuming from {checkpoints / 'ckpt-00000010.pt'} at step 10" in second.output

    # retraining steps 11-30 from the step-10 checkpoint lands exactly where a clean run does
    clean = run(single_process_argv([*common, "--steps", "30"]), tmp_path / "clean.log")
    assert clean.returncode == 0, clean.output
    assert second.digests() == clean.digests()
