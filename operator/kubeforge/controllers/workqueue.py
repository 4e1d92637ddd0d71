"""A keyed work queue like controller-runtime's: events for one object coalesce into one reconcile.

A key is processed by one worker at a time; a key enqueued while it is being processed runs again
once afterwards (never concurrently, never lost). `requeue_after` schedules a delayed run (backoff,
deadlines, TTLs) without holding a worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)


class WorkQueue(Generic[K]):
    def __init__(
        self, name: str, reconcile: Callable[[K], Awaitable[float | None]], workers: int = 4
    ) -> None:
        """`reconcile(key)` returns seconds after which to run again, or None."""
        self.name = name
        self._reconcile = reconcile
        self._workers = workers
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.processed = 0
        self.failures = 0

    def add(self, key: K) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        """Run `key` after `delay` seconds; an earlier pending timer for it wins."""
        loop = asyncio.get_running_loop()
        existing = self._timers.get(key)
        when = loop.time() + delay
        if existing is not None and existing.when() <= when:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"{self.name}-{i}") for i in range(self._workers)
        ]

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def idle(self) -> bool:
        return not self._queued and not self._active

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._active.add(key)
            delay: float | None = None
            try:
                delay = await self._reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("%s: reconcile of %s failed; retrying in 5s", self.name, key)
                delay = 5.0
            finally:
                self.processed += 1
                self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                self.add(key)
            elif delay is not None:
                self.add_after(key, delay)
