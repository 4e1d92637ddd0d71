"""SIGTERM to torchrun mid-run: rank 0 checkpoints, and the restart resumes there and ends where an
uninterrupted run ends."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.trainer.runs import (
    TOTAL_STEPS,
    TRAINING_ARGS,
    ReferenceRun,
    finish,
    read_progress,
    run,
    start,
    terminate,
    torchrun_argv,
    wait_for_step,
)

pytestmark = pytest.mark.torch

INTERRUPT_AFTER = 15  # not a multiple of --checkpoint-every: the resume point must be the SIGTERM checkpoint


def test_preempted_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(
    tmp_path: Path, reference_run: ReferenceRun
) -> None:
    checkpoint_dir = tmp_path / "checkpoints"
    args = [*TRAINING_ARGS, "--checkpoint-dir", str(checkpoint_dir)]

    # Slow steps (0.1 s) make the interruption land mid-run however fast the machine; the sleep
    # happens between steps, so it changes nothing that is computed.
    first = start(torchrun_argv(2, [*args, "--sleep-per-step", "0.1"]), tmp_path / "first.log")
    wait_for_step(first, checkpoint_dir, INTERRUPT_AFTER)
    terminate(first)
    interrupted = finish(first, tmp_path / "first.log")
    assert interrupted.returncode != 0, interrupted.output

    # Both ranks stopped after the same step S, and rank 0 checkpointed exactly that step.
    stops = re.findall(r"\[rank (\d)\] WARNING .*SIGTERM: stopped after step (\d+)", interrupted.output)
    assert sorted(rank for rank, _ in stops) == ["0", "1"], interrupted.output
    assert len({step for _, step in stops}) == 1, interrupted.output
    stopped_at = int(stops[0][1])
    assert INTERRUPT_AFTER <= stopped_at < TOTAL_STEPS
    newest = sorted(checkpoint_dir.glob("ckpt-*.pt"))[-1]
    assert newest.name == f"ckpt-{stopped_at:08d}.pt"
    progress = read_progress(checkpoint_dir)
    assert progress is not None
    assert progress["state"] == "running"
    assert progress["checkpoint"]["step"] == stopped_at

    resumed = run(torchrun_argv(2, args), tmp_path / "second.log")
    assert resumed.returncode == 0, resumed.output
    for rank in (0, 1):
        assert (
            f"[rank {rank}] INFO kubeforge.trainer.loop: resuming from {newest} at step {stopped_at}"
            in resumed.output
        )
    assert min(resumed.losses()) == stopped_at + 1  # no step was trained twice

    # Exactly equal, not merely close: data order, parameters, momentum buffers and RNG states all come
    # back bit for bit, and with 2 ranks the gradient all-reduce is a single (commutative) float add, so
    # no summation order can differ between the runs.
    digests = resumed.digests()
    assert digests[0] == digests[1] == reference_run.run.digests()[0]
