"""A keyed work queue like client-go's: events for one object coalesce into one reconcile.

A key is processed by one worker at a time; a key enqueued while it is being processed runs again
once afterwards (never concurrently, never lost). `add_after` schedules a delayed run (deadlines,
TTLs) without holding a worker. A failed reconcile is retried with per-key exponential backoff
and jitter (client-go's ItemExponentialFailureRateLimiter: 5 ms doubling, capped), reset by the
next success; a failure already shown in the object's status (`Surfaced`) is retried slowly.
Only a run at or after its scheduled retry raises the backoff: events still run a failing key at
once (an edit may fix it), but a burst of them (the children it just created) failing before
the retry is due keeps that retry's time, so a clash resolved a moment later is retried on time.
Optional `QueueHooks` see a key enter the ready queue, a worker pick it, and a failure's retry
(the operator's metrics: depth, wait time, retries).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
K = TypeVar("K", bound=Hashable)
# a run started this close to its retry's time is that retry (timers may fire a tick early)
EARLY_TOLERANCE = 0.001


class Surfaced(Exception):
    """A reconcile failed for a reason that is now in the object's status and Events.

    It cannot go away without a change (a denial, an invalid child, a name clash), so it is
    retried slowly; retrying fast would only load the API server.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        # the condition's reason (ChildConflict, Forbidden, ...): a metric label from a small set
        self.reason = reason


class Abandoned(Exception):
    """A reconcile that no retry can complete, and that the object's own end is about to make moot
    (its namespace is being deleted): not retried. An event or the resync runs the key again."""


class QueueHooks:
    """Instrumentation points of a WorkQueue; this base class does nothing.

    Called on the event loop, synchronously, so they must be cheap and must not raise.
    """

    def enqueued(self, key: Hashable) -> None:
        """`key` entered the ready queue (it waits for a worker; delayed keys enter when due)."""

    def picked(self, key: Hashable) -> None:
        """A worker took `key` from the ready queue."""

    def retried(self, key: Hashable) -> None:
        """A reconcile of `key` failed and a retry is scheduled."""


@dataclass(frozen=True)
class Backoff:
    """Delay before retry n (1, 2, ...): base * factor^(n-1), capped, with +-jitter."""

    base: float = 0.005
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.1
    # the first retry of a Surfaced failure waits at least this long
    surfaced_floor: float = 10.0

    def delay(self, failures: int, surfaced: bool = False) -> float:
        exponent = min(max(failures - 1, 0), 64)  # 2**64 * base is past any cap
        delay = min(self.cap, self.base * self.factor**exponent)
        if surfaced:
            delay = min(self.cap, max(delay, self.surfaced_floor * self.factor**exponent))
        return delay * (1 + random.uniform(-self.jitter, self.jitter))


class WorkQueue(Generic[K]):
    def __init__(
        self,
        name: str,
        reconcile: Callable[[K], Awaitable[float | None]],
        workers: int = 4,
        backoff: Backoff | None = None,
        hooks: QueueHooks | None = None,
    ) -> None:
        """`reconcile(key)` returns seconds after which to run again, or None."""
        self.name = name
        self._reconcile = reconcile
        self._workers = workers
        self._backoff = backoff or Backoff()
        self._hooks = hooks or QueueHooks()
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._active: set[K] = set()
        self._dirty: set[K] = set()
        self._timers: dict[K, asyncio.TimerHandle] = {}
        # a failing key's backoff: (its level, the loop time of its scheduled retry)
        self._backoffs: dict[K, tuple[int, float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._draining = False
        self.processed = 0
        self.failures = 0

    def add(self, key: K) -> None:
        if key in self._active:
            self._dirty.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)
            self._hooks.enqueued(key)

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

    def forget(self, key: K) -> None:
        """The object is gone: drop its backoff and pending timer (memory stays bounded by live keys)."""
        self._backoffs.pop(key, None)
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def failures_of(self, key: K) -> int:
        """The backoff level of `key`: failures at or after a scheduled retry in a row (0 after a success)."""
        return self._backoffs.get(key, (0, 0.0))[0]

    def tracked(self) -> int:
        """Keys the queue holds any state for (queued, active, timed or backing off)."""
        return len(self._queued | self._active | self._dirty | set(self._timers) | set(self._backoffs))

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def start(self) -> None:
        """Start the workers (again, after `pause`); keys queued meanwhile are processed."""
        if self._tasks:
            return
        self._draining = False
        self._tasks = [
            asyncio.create_task(self._worker(), name=f"{self.name}-{i}") for i in range(self._workers)
        ]

    async def pause(self) -> None:
        """Stop the workers now (leadership lost); keys in flight are queued again, none is lost."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        await self.pause()

    async def drain(self, timeout: float) -> bool:
        """Graceful shutdown: take no new key, let in-flight reconciles finish within `timeout`.

        True when every reconcile finished; the rest are cancelled (and reported False).
        """
        self._draining = True
        for timer in self._timers.values():
            timer.cancel()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._active and loop.time() < deadline:
            await asyncio.sleep(0.02)
        finished = not self._active
        await self.pause()
        return finished

    def idle(self) -> bool:
        return not self._queued and not self._active

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._draining:
            key = await self._queue.get()
            if self._draining:
                self._queue.put_nowait(key)  # left for no one: shutting down
                return
            self._hooks.picked(key)
            self._queued.discard(key)
            self._active.add(key)
            started = loop.time()
            delay: float | None = None
            try:
                delay = await self._reconcile(key)
                self._backoffs.pop(key, None)
            except asyncio.CancelledError:
                self._active.discard(key)
                self.add(key)  # cut short (leadership lost): it runs again when workers start
                raise
            except Abandoned as err:
                self._backoffs.pop(key, None)
                log.info("%s: %s: %s; not retried", self.name, key, err)
            except Exception as err:  # noqa: BLE001 - any failure is retried; _failed logs it
                self.failures += 1
                self._hooks.retried(key)
                delay = self._failed(key, err, started)
            finally:
                self.processed += 1
                self._active.discard(key)
            if key in self._dirty:
                self._dirty.discard(key)
                if key in self._backoffs:
                    self.add_after(key, delay or 0.0)  # a failure's backoff holds even against new events
                else:
                    self.add(key)
            elif delay is not None:
                self.add_after(key, delay)

    def _failed(self, key: K, err: Exception, started: float) -> float:
        """Count a failed run of `key` and return the delay until its retry."""
        now = asyncio.get_running_loop().time()
        level, due = self._backoffs.get(key, (0, 0.0))
        if level and started < due - EARLY_TOLERANCE:
            # an event ran the key before its retry was due: the retry keeps its time and level
            log.debug("%s: %s failed again before its retry: %s", self.name, key, err)
            return max(due - now, 0.0)
        failures = level + 1
        surfaced = isinstance(err, Surfaced)
        delay = self._backoff.delay(failures, surfaced=surfaced)
        self._backoffs[key] = (failures, now + delay)
        if surfaced:
            log.info("%s: %s: %s; retrying in %.1fs", self.name, key, err, delay)
        elif failures <= 3 or failures % 10 == 0:
            log.warning(
                "%s: reconcile of %s failed (%d in a row): %s; retrying in %.3fs",
                self.name,
                key,
                failures,
                err,
                delay,
                exc_info=not _expected(err),
            )
        return delay


def _expected(err: Exception) -> bool:
    """API errors are expected (the message says it all); anything else deserves a traceback."""
    from kubeforge.k8s.client import ApiError

    return isinstance(err, ApiError)
