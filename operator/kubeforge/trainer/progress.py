"""``<checkpoint_dir>/progress.json``: how far training got, for the operator to fold into the status.

Rank 0 replaces the file atomically (temp file, fsync, rename) every ``--log-every`` steps, after each
checkpoint, and when training ends, so a reader never sees a partial document. Its shape::

    {
      "state": "running",                 # "running" while training (also after a preemption
                                          #   checkpoint: the next attempt resumes), "succeeded" at the end
      "step": 120,                        # optimizer steps completed
      "total_steps": 300,                 # steps the run will train in total
      "loss": 0.0931,                     # training loss of the last step, averaged over ranks
      "time": "2026-01-02T03:04:05Z",     # when this document was written (RFC 3339, UTC)
      "checkpoint": {                     # the newest checkpoint, or null before the first one
        "step": 100,
        "path": "/checkpoints/job/ckpt-00000100.pt",
        "time": "2026-01-02T03:03:59Z",
        "loss": 0.1044
      },
      "validation": {                     # the newest validation, or null for a model without a
        "step": 100,                      #   validation set (the classifiers) and before the first
        "loss": 1.9302,                   # mean cross-entropy per target (per byte for the language
        "perplexity": 6.891               #   model), over every rank's share of the held-out data;
      },                                  #   perplexity = exp(loss)
      "output": {                         # only once succeeded and exported, else null
        "uri": "pvc://models/mnist",      # the repository as given (--output-uri)
        "path": "/mnt/pvc/models/mnist/mlp"   # the model directory written in it
      }
    }

``checkpoint`` mirrors ``status.lastCheckpoint`` of the TrainingJob API, ``validation``
``status.validation``; ``output.uri`` is what the operator hands to the ModelDeployment it creates.

The operator cannot read the checkpoint volume, so rank 0 also copies each document (compact, one
line) to the container's termination message file (``--termination-log``, env
``KUBEFORGE_TERMINATION_LOG``, default ``/dev/termination-log`` when the kubelet provides it): after
the worker exits, the last progress is in its pod's ``status.containerStatuses[].state.terminated.message``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from kubeforge.trainer.atomic import atomic_write_bytes

PROGRESS_FILE = "progress.json"
TrainingState = Literal["running", "succeeded"]


def utc_now() -> str:
    """The current time as RFC 3339 with a ``Z`` suffix (the form Kubernetes timestamps use)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CheckpointRecord:
    """The newest checkpoint, as reported in progress.json."""

    step: int
    path: str
    time: str
    loss: float


@dataclass(frozen=True)
class ValidationRecord:
    """The newest validation loss, as reported in progress.json."""

    step: int
    loss: float
    perplexity: float

    @classmethod
    def of(cls, step: int, loss: float) -> ValidationRecord:
        """The record of a mean cross-entropy ``loss`` (nats); perplexity overflows to inf, never raises."""
        return cls(step, loss, math.exp(loss) if loss < 700 else math.inf)


@dataclass(frozen=True)
class OutputRecord:
    """The exported model, as reported in progress.json."""

    uri: str
    path: str


class ProgressReporter:
    """Writes progress.json into a directory; a reporter without a directory does nothing."""

    def __init__(self, directory: Path | None, total_steps: int, termination_log: Path | None = None) -> None:
        self.path = directory / PROGRESS_FILE if directory is not None else None
        self.termination_log = termination_log
        self.total_steps = total_steps
        self.checkpoint: CheckpointRecord | None = None
        self.validation: ValidationRecord | None = None

    def record_checkpoint(self, record: CheckpointRecord) -> None:
        """Remember the newest checkpoint; it is reported with every following write."""
        self.checkpoint = record

    def record_validation(self, record: ValidationRecord) -> None:
        """Remember the newest validation; it is reported with every following write."""
        self.validation = record

    def report(
        self,
        step: int,
        loss: float | None,
        state: TrainingState = "running",
        output: OutputRecord | None = None,
    ) -> None:
        """Replace progress.json (and the termination message) with the current state."""
        if self.path is None and self.termination_log is None:
            return
        document: dict[str, Any] = {
            "state": state,
            "step": step,
            "total_steps": self.total_steps,
            "loss": loss,
            "time": utc_now(),
            "checkpoint": asdict(self.checkpoint) if self.checkpoint else None,
            "validation": asdict(self.validation) if self.validation else None,
            "output": asdict(output) if output else None,
        }
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, (json.dumps(document, indent=2) + "\n").encode())
        if self.termination_log is not None:
            # overwritten in place: the kubelet bind-mounts this one file, so there is no sibling to
            # rename from, and it reads it only once the container has exited
            self.termination_log.write_text(json.dumps(document, separators=(",", ":")) + "\n")


def read_progress(directory: Path) -> dict[str, Any] | None:
    """The progress document in ``directory``, or None when there is none yet."""
    try:
        document: dict[str, Any] = json.loads((directory / PROGRESS_FILE).read_text())
    except FileNotFoundError:
        return None
    return document
