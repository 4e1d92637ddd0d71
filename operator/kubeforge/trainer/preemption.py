"""SIGTERM as a request to stop at the next step boundary (preemption, eviction, node drain).

Kubernetes sends SIGTERM to the container's PID 1, torchrun, which forwards it to every worker and
SIGKILLs them 30 s later (``torch.distributed.elastic``'s shutdown timeout; the pod's
``terminationGracePeriodSeconds`` bounds it from outside). The handler only sets a flag: the loop
reads it at the end of each step, where the ranks agree on it in a collective, so all of them stop
after the same step and rank 0 checkpoints a state every rank shares.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

SignalHandler = Callable[[int, FrameType | None], Any] | int | None

PREEMPTED_EXIT_CODE = 128 + signal.SIGTERM  # what a process killed by SIGTERM reports: retryable


class PreemptionWatch:
    """Records whether SIGTERM arrived; use as a context manager around the training loop."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: SignalHandler = signal.SIG_DFL

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # nothing else here: the main thread may be inside a collective or holding a logging lock
        self.requested = True

    def __enter__(self) -> PreemptionWatch:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)
