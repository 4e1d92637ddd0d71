"""Two ranks under torchrun (gloo on CPU) train the reference MLP: the loss falls and the ranks agree."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.trainer.runs import TOTAL_STEPS, ReferenceRun, read_progress

pytestmark = pytest.mark.torch


def test_loss_goes_down(reference_run: ReferenceRun) -> None:
    losses = reference_run.run.losses()
    assert sorted(losses) == list(range(1, TOTAL_STEPS + 1)), reference_run.run.output
    first, last = (
        [losses[s] for s in range(1, 6)],
        [losses[s] for s in range(TOTAL_STEPS - 4, TOTAL_STEPS + 1)],
    )
    # 4 classes: chance is ln 4 = 1.39; the linear teacher is learnable, and 40 steps more than halve it
    assert statistics.mean(last) < 0.5 * statistics.mean(first), losses


def test_ranks_end_with_identical_parameters(reference_run: ReferenceRun) -> None:
    digests = reference_run.run.digests()
    assert set(digests) == {0, 1}, reference_run.run.output
    assert digests[0] == digests[1]


def test_both_ranks_joined_one_gloo_group(reference_run: ReferenceRun) -> None:
    output = reference_run.run.output
    assert "[rank 0] INFO kubeforge.trainer.distributed: joined process group: rank 0/2" in output
    assert "[rank 1] INFO kubeforge.trainer.distributed: joined process group: rank 1/2" in output
    assert "backend gloo" in output


def test_progress_reports_success_and_last_checkpoint(reference_run: ReferenceRun) -> None:
    progress = read_progress(reference_run.checkpoint_dir)
    assert progress is not None
    assert progress["state"] == "succeeded"
    assert progress["step"] == progress["total_steps"] == TOTAL_STEPS
    assert progress["loss"] == pytest.approx(reference_run.run.losses()[TOTAL_STEPS], abs=1e-6)
    checkpoint = progress["checkpoint"]
    assert checkpoint["step"] == TOTAL_STEPS
    assert checkpoint["path"] == str(reference_run.checkpoint_dir / "ckpt-00000040.pt")
    assert checkpoint["time"].endswith("Z")
    assert progress["output"] == {"uri": str(reference_run.repository), "path": str(reference_run.model_dir)}


def test_termination_message_holds_the_same_progress(reference_run: ReferenceRun) -> None:
    # what the kubelet copies into the pod's status for the operator, which cannot read the volume
    text = reference_run.termination_log.read_text()
    assert len(text.splitlines()) == 1 and len(text.encode()) < 4096  # the kubelet keeps at most 4 KiB
    assert json.loads(text) == read_progress(reference_run.checkpoint_dir)


def test_keeps_the_last_k_checkpoints(reference_run: ReferenceRun) -> None:
    files = sorted(p.name for p in reference_run.checkpoint_dir.iterdir())
    # --checkpoint-every 10 --keep-last 3 over 40 steps; no temp files left behind
    assert files == ["ckpt-00000020.pt", "ckpt-00000030.pt", "ckpt-00000040.pt", "progress.json"]
