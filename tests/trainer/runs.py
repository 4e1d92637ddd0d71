"""Running the trainer as real processes (torchrun on CPU with gloo, or one process) and reading its logs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeforge.testing.triton import free_port

RUN_TIMEOUT = 180.0
# The training every run in this folder shares; the resumed and the reference runs must agree on it.
TRAINING_ARGS = (
    "--model", "kubeforge.trainer.models:MLP",
    "--steps", "40",
    "--batch-size", "16",
    "--dataset-size", "512",
    "--lr", "0.05",
    "--seed", "7",
    "--checkpoint-every", "10",
    "--keep-last", "3",
    "--log-every", "1",
)  # fmt: skip
TOTAL_STEPS = 40
MODEL_NAME = "mlp"

# The language model's run: 2 ranks, 100 AdamW steps of 16 windows of 128 bytes per rank, exported as a
# streaming model. Its validation loss must end below LM_VALIDATION_LOSS_BELOW nats per byte: the
# corpus's unigram entropy is 3.17 (a model that ignores context cannot go below it) and 100 steps
# reach about 2.47 (perplexity 11.8); uniform guessing is ln 256 = 5.55.
LM_TRAINING_ARGS = (
    "--model", "kubeforge.trainer.language_model:ByteTransformer",
    "--steps", "100",
    "--batch-size", "16",
    "--optimizer", "adamw",
    "--lr", "0.003",
    "--seed", "7",
    "--eval-every", "50",
    "--checkpoint-every", "50",
    "--keep-last", "2",
    "--log-every", "1",
)  # fmt: skip
LM_TOTAL_STEPS = 100
LM_MODEL_NAME = "opticks"
# the same export with one slot: what a request that never ends would block
LM_SINGLE_MODEL_NAME = f"{LM_MODEL_NAME}-single"
LM_VALIDATION_LOSS_BELOW = 2.6

_DIGEST = re.compile(r"\[rank (\d+)\] .*parameters at step (\d+): sha256 ([0-9a-f]{64})")
_LOSS = re.compile(r"\[rank 0\] .*step (\d+)/\d+ loss ([0-9.]+)")
_VALIDATION = re.compile(r"\[rank 0\] .*step (\d+)/\d+ validation loss ([0-9.]+)")


@dataclass
class Run:
    """A finished trainer run: its exit code and everything it printed (all ranks and the launcher)."""

    returncode: int
    output: str

    def digests(self) -> dict[int, str]:
        """rank -> sha256 of its final parameters, as each rank logged it."""
        return {int(rank): digest for rank, _, digest in _DIGEST.findall(self.output)}

    def losses(self) -> dict[int, float]:
        """step -> mean loss over ranks, as rank 0 logged it."""
        return {int(step): float(loss) for step, loss in _LOSS.findall(self.output)}

    def validation_losses(self) -> dict[int, float]:
        """step -> validation loss, as rank 0 logged it."""
        return {int(step): float(loss) for step, loss in _VALIDATION.findall(self.output)}


@dataclass(frozen=True)
class ReferenceRun:
    """An uninterrupted 2-rank run of ``TRAINING_ARGS`` that exported the python flavour to ``repository``
    (or of ``LM_TRAINING_ARGS``, exported as python-llm, with ``model_name`` ``LM_MODEL_NAME``)."""

    run: Run
    checkpoint_dir: Path
    repository: Path
    termination_log: Path
    model_name: str = MODEL_NAME

    @property
    def model_dir(self) -> Path:
        return self.repository / self.model_name


def trainer_env(**extra: str) -> dict[str, str]:
    """This environment without KUBEFORGE_* variables (they would override the flags under test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEFORGE_")}
    env.update(MASTER_ADDR="127.0.0.1", PYTHONUNBUFFERED="1", **extra)
    return env


def torchrun_argv(nproc: int, args: Sequence[str]) -> list[str]:
    """``torchrun --nproc-per-node N -m kubeforge.trainer ARGS`` on a free loopback port."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1",
        "--master-port", str(free_port()),
        "-m", "kubeforge.trainer", *args,
    ]  # fmt: skip


def single_process_argv(args: Sequence[str]) -> list[str]:
    """``python -m kubeforge.trainer ARGS``: world size 1 without torchrun."""
    return [sys.executable, "-m", "kubeforge.trainer", *args]


def start(argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a run whose combined output goes to ``log_path``."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            list(argv),
            env=env or trainer_env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def finish(process: subprocess.Popen[bytes], log_path: Path, timeout: float = RUN_TIMEOUT) -> Run:
    """Wait for a run started with ``start`` (killing it after ``timeout``) and collect its output."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    return Run(process.returncode, log_path.read_text(errors="replace"))


def run(argv: Sequence[str], log_path: Path) -> Run:
    """Run to completion."""
    return finish(start(argv, log_path), log_path)


def read_progress(checkpoint_dir: Path) -> dict[str, Any] | None:
    """progress.json, or None before the first write (it is replaced atomically, so never partial)."""
    try:
        document: dict[str, Any] = json.loads((checkpoint_dir / "progress.json").read_text())
    except FileNotFoundError:
        return None
    return document


def wait_for_step(
    process: subprocess.Popen[bytes], checkpoint_dir: Path, step: int, timeout: float = 60.0
) -> int:
    """Block until progress.json reports at least ``step``; returns the step it reported."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        progress = read_progress(checkpoint_dir)
        if progress is not None and progress["step"] >= step:
            return int(progress["step"])
        if process.poll() is not None:
            raise AssertionError(f"trainer exited with {process.returncode} before step {step}")
        time.sleep(0.02)
    raise AssertionError(f"no progress to step {step} within {timeout}s")


def terminate(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the launcher only, as the kubelet does to a container's PID 1; torchrun forwards it."""
    process.send_signal(signal.SIGTERM)
