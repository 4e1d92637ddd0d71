"""The keyed work queue: one worker per key, coalescing, per-key backoff, bounded state."""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from kubeforge.controllers.workqueue import Backoff, Surfaced, WorkQueue


def sync(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on its own event loop (no plugin needed)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


FAST = Backoff(base=0.01, factor=2.0, cap=0.08, jitter=0.0, surfaced_floor=0.05)


async def _until(predicate: object, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


@sync
async def test_a_key_is_never_reconciled_by_two_workers_at_once() -> None:
    running: Counter[str] = Counter()
    most: Counter[str] = Counter()
    runs: Counter[str] = Counter()

    async def reconcile(key: str) -> None:
        running[key] += 1
        most[key] = max(most[key], running[key])
        await asyncio.sleep(0.02)  # long enough for many events to arrive mid-reconcile
        running[key] -= 1
        runs[key] += 1

    queue: WorkQueue[str] = WorkQueue("test", reconcile, workers=8, backoff=FAST)
    queue.start()
    try:
        for _ in range(5):
            for key in ("a", "b", "c"):
                for _ in range(20):  # a burst of child events while the key is being reconciled
                    queue.add(key)
            await asyncio.sleep(0.005)
        await _until(queue.idle)
        await asyncio.sleep(0.05)
        await _until(queue.idle)
    finally:
        await queue.stop()
    assert most == Counter({"a": 1, "b": 1, "c": 1})
    # 300 events per key coalesce into a few reconciles, and an event during a reconcile is never lost
    assert all(2 <= runs[k] <= 10 for k in ("a", "b", "c")), runs


@sync
async def test_an_event_arriving_mid_reconcile_runs_the_key_once_more() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    runs = 0

    async def reconcile(key: str) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            started.set()
            await release.wait()

    queue: WorkQueue[str] = WorkQueue("test", reconcile, workers=4, backoff=FAST)
    queue.start()
    try:
        queue.add("k")
        await started.wait()
        queue.add("k")
        queue.add("k")
        await asyncio.sleep(0.02)
        assert runs == 1  # not concurrently
        release.set()
        await _until(lambda: runs == 2 and queue.idle())
        await asyncio.sleep(0.03)
        assert runs == 2  # once more, not twice
    finally:
        await queue.stop()


class RecordingBackoff(Backoff):
    """Records which retry each delay was asked for (frozen dataclass: the list is shared state)."""

    asked: list[tuple[int, bool]]

    def delay(self, failures: int, surfaced: bool = False) -> float:
        self.asked.append((failures, surfaced))
        return super().delay(failures, surfaced)


@sync
async def test_failures_back_off_exponentially_and_success_resets() -> None:
    backoff = RecordingBackoff(base=0.001, jitter=0.0)
    object.__setattr__(backoff, "asked", [])
    outcomes = iter([RuntimeError("1"), RuntimeError("2"), RuntimeError("3"), None, RuntimeError("5"), None])
    runs = 0

    async def reconcile(key: str) -> float | None:
        nonlocal runs
        runs += 1
        outcome = next(outcomes, None)
        if outcome is not None:
            raise outcome
        return 0.001 if runs == 4 else None  # the success asks to run again: the next failure is the first

    queue: WorkQueue[str] = WorkQueue("test", reconcile, workers=1, backoff=backoff)
    queue.start()
    try:
        queue.add("k")
        await _until(lambda: runs == 6 and queue.idle())
        assert queue.failures_of("k") == 0  # reset by the success
        assert queue.tracked() == 0
    finally:
        await queue.stop()
    assert backoff.asked == [(1, False), (2, False), (3, False), (1, False)]
    assert [Backoff(jitter=0).delay(n) for n in (1, 2, 3, 4)] == [0.005, 0.01, 0.02, 0.04]


def test_backoff_is_capped_and_jittered() -> None:
    backoff = Backoff()  # client-go's defaults: 5 ms doubling, capped (here at 5 minutes)
    assert backoff.delay(1) == pytest.approx(0.005, rel=0.11)
    assert backoff.delay(5) == pytest.approx(0.08, rel=0.11)
    assert backoff.delay(10_000) == pytest.approx(300, rel=0.11)
    assert len({round(backoff.delay(3), 9) for _ in range(50)}) > 1  # jitter spreads the retries
    assert backoff.delay(1, surfaced=True) >= 9.0  # an error shown in status is retried slowly


@sync
async def test_a_surfaced_failure_is_retried_slowly() -> None:
    times: list[float] = []

    async def reconcile(key: str) -> None:
        times.append(asyncio.get_running_loop().time())
        if len(times) < 3:
            raise Surfaced("ChildConflict: Service ns/x is controlled by someone else")

    queue: WorkQueue[str] = WorkQueue("test", reconcile, workers=1, backoff=FAST)
    queue.start()
    try:
        queue.add("k")
        await _until(lambda: len(times) == 3 and queue.idle())
    finally:
        await queue.stop()
    assert times[1] - times[0] >= 0.05 * 0.95  # the surfaced floor, not the 10 ms fast retry
    assert times[2] - times[1] >= 0.08 * 0.95  # doubling up to the cap


@sync
async def test_memory_is_bounded_by_live_keys() -> None:
    async def reconcile(key: int) -> float | None:
        if key % 2:
            raise RuntimeError("odd keys fail")
        return 60.0  # even keys ask to be looked at again in a minute

    queue: WorkQueue[int] = WorkQueue("test", reconcile, workers=4, backoff=Backoff(base=30, jitter=0))
    queue.start()
    try:
        for key in range(1000):
            queue.add(key)
        await _until(lambda: queue.processed >= 1000 and queue.idle())
        assert queue.tracked() == 1000  # a timer or a backoff per key, nothing more
        for key in range(1000):
            queue.forget(key)  # the objects were deleted
        assert queue.tracked() == 0
    finally:
        await queue.stop()


@sync
async def test_backoff_holds_against_events_for_a_failing_key() -> None:
    runs = 0

    async def reconcile(key: str) -> None:
        nonlocal runs
        runs += 1
        queue.add(key)  # our own status write sends an event for the key mid-reconcile
        raise RuntimeError("still failing")

    queue: WorkQueue[str] = WorkQueue("test", reconcile, workers=1, backoff=Backoff(base=0.05, jitter=0))
    queue.start()
    try:
        queue.add("k")
        await asyncio.sleep(0.3)
    finally:
        await queue.stop()
    # 50, 100 ms backoff: about 3 runs in 300 ms, not a storm of hundreds
    assert 2 <= runs <= 4, runs


@sync
async def test_events_before_a_retry_is_due_do_not_raise_its_backoff() -> None:
    """A clash fails the first run; the children it created send events that run it again (and fail)
    before the retry is due. The clash is then resolved: the retry comes at its first time, not
    after a backoff that each of those early runs doubled."""
    clash = True
    runs: list[tuple[float, bool]] = []

    async def reconcile(key: str) -> None:
        runs.append((asyncio.get_running_loop().time(), clash))
        if clash:
            raise Surfaced("ChildConflict: Service ns/x already exists")

    backoff = Backoff(base=0.01, factor=2.0, cap=10.0, jitter=0.0, surfaced_floor=0.1)
    queue: WorkQueue[str] = WorkQueue("test", reconcile, workers=1, backoff=backoff)
    queue.start()
    try:
        queue.add("k")
        await _until(lambda: len(runs) == 1 and queue.idle())
        for expected in (2, 3, 4):  # child events, each running the key at once
            queue.add("k")
            await _until(lambda n=expected: len(runs) == n and queue.idle())
        assert queue.failures_of("k") == 1
        clash = False  # the user deletes their Service
        await _until(lambda: len(runs) == 5 and queue.idle(), timeout=5.0)
        assert queue.failures_of("k") == 0
        assert queue.tracked() == 0
    finally:
        await queue.stop()
    first, (retried, clashed) = runs[0][0], runs[4]
    assert not clashed
    # the first retry's time (100 ms), not 800 ms after three doublings
    assert 0.1 * 0.95 <= retried - first < 0.4, retried - first


@sync
async def test_a_retry_that_fails_again_doubles_the_backoff() -> None:
    times: list[float] = []

    async def reconcile(key: str) -> None:
        times.append(asyncio.get_running_loop().time())
        if len(times) < 4:
            raise RuntimeError("still failing")

    queue: WorkQueue[str] = WorkQueue("test", reconcile, workers=1, backoff=Backoff(base=0.04, jitter=0.0))
    queue.start()
    try:
        queue.add("k")
        await _until(lambda: len(times) == 4 and queue.idle())
    finally:
        await queue.stop()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.04 * 0.95 and gaps[1] >= 0.08 * 0.95 and gaps[2] >= 0.16 * 0.95, gaps


def test_a_failed_reconciles_log_line_says_why(caplog: pytest.LogCaptureFixture) -> None:
    from kubeforge.k8s.client import ApiError

    async def scenario() -> None:
        attempts = 0

        async def reconcile(key: str) -> None:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise ApiError(
                    503, "Service Unavailable", "etcdserver: leader changed", call="apply Service ns/a"
                )

        queue: WorkQueue[str] = WorkQueue("test", reconcile, workers=1, backoff=FAST)
        queue.start()
        try:
            queue.add("a")
            await _until(lambda: attempts == 2 and queue.idle())
        finally:
            await queue.stop()

    with caplog.at_level("WARNING", logger="kubeforge.controllers.workqueue"):
        asyncio.run(scenario())
    [line] = [r.getMessage() for r in caplog.records if "reconcile of a failed" in r.getMessage()]
    assert "apply Service ns/a: 503 Service Unavailable: etcdserver: leader changed" in line, line
    assert "(1 in a row)" in line and "retrying in" in line
