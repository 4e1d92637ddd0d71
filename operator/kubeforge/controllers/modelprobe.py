"""Triton's per-model state, read off the reconcile path.

A reconcile never waits for a Triton server: it reads the last answer this prober has, and a
probe of the server runs in the background (at most one per ModelDeployment at a time). So a
network policy that drops the operator's packets, or a server that hangs, delays no reconcile by
its timeout; it shows as the probe's error in `ModelsReady`. When an answer changes, the
ModelDeployment is reconciled again (`on_change`), so status follows within one probe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kubeforge.api.modeldeployment import ModelState
from kubeforge.triton.client import TritonObservation, model_states

Key = tuple[str, str]
Fetch = Callable[[str, float], Awaitable[TritonObservation]]
PROBE_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class ProbeAnswer:
    url: str
    states: list[ModelState] | None  # None: the server was not reachable
    error: str | None


class ModelProber:
    def __init__(self, fetch: Fetch = model_states, timeout: float = PROBE_TIMEOUT_SECONDS) -> None:
        self._fetch = fetch
        self._timeout = timeout
        self._answers: dict[Key, ProbeAnswer] = {}
        self._running: dict[Key, asyncio.Task[None]] = {}
        # reconcile the ModelDeployment again (set by the runtime)
        self.on_change: Callable[[Key], None] = lambda key: None

    def latest(self, key: Key, url: str) -> tuple[list[ModelState] | None, str | None]:
        """The last answer of the server at `url` (None, None before the first), and a new probe
        started in the background unless one runs."""
        if key not in self._running:
            task = asyncio.create_task(self._probe(key, url), name=f"model probe {key[0]}/{key[1]}")
            self._running[key] = task
            task.add_done_callback(lambda _: self._running.pop(key, None))
        answer = self._answers.get(key)
        if answer is None or answer.url != url:
            return None, None
        return answer.states, answer.error

    async def _probe(self, key: Key, url: str) -> None:
        result = await self._fetch(url, self._timeout)
        answer = ProbeAnswer(url, list(result.models) if result.reachable else None, result.error)
        if self._answers.get(key) != answer:
            self._answers[key] = answer
            self.on_change(key)

    def forget(self, key: Key) -> None:
        """The ModelDeployment is gone: its answer and its running probe go too."""
        self._answers.pop(key, None)
        task = self._running.pop(key, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
