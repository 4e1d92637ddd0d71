"""The operator's Prometheus metrics: names, labels and types, the queue's, leadership, the server."""

from __future__ import annotations

import asyncio
import functools
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from kubeforge.controllers.metrics import OperatorMetrics, serve_metrics
from kubeforge.controllers.workqueue import Backoff, Surfaced, WorkQueue

Families = dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]


def sync(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on its own event loop (no plugin needed)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


async def _until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.005)


def families(metrics: OperatorMetrics) -> Families:
    """{family name: (type, [(sample name, labels, value)])}, as Prometheus would read them."""
    return {
        family.name: (family.type, [(s.name, s.labels, s.value) for s in family.samples])
        for family in text_string_to_metric_families(metrics.render())
    }


def value(metrics: OperatorMetrics, sample: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(metrics.render()):
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return float(s.value)
    return None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_exposition_has_every_metric_with_its_type_and_labels() -> None:
    metrics = OperatorMetrics(
        identity="kubeforge-0", api_calls=Counter(get=3, apply=2), cache_objects=lambda: {"Pod": 4}
    )
    metrics.observe("ModelDeployment", 0.02, ok=True)
    metrics.observe("TrainingJob", 0.3, ok=False, reason="ChildConflict")
    hooks = metrics.queue_hooks("modeldeployment")
    hooks.enqueued(("ns", "a"))
    hooks.retried(("ns", "a"))
    metrics.set_leader(True)

    found = families(metrics)
    expected = {
        "kubeforge_reconcile": ("counter", "kubeforge_reconcile_total", {"kind": "ModelDeployment"}),
        "kubeforge_reconcile_errors": (
            "counter",
            "kubeforge_reconcile_errors_total",
            {"kind": "TrainingJob", "reason": "ChildConflict"},
        ),
        "kubeforge_reconcile_duration_seconds": (
            "histogram",
            "kubeforge_reconcile_duration_seconds_count",
            {"kind": "TrainingJob"},
        ),
        "kubeforge_api_calls": ("counter", "kubeforge_api_calls_total", {"verb": "apply"}),
        "kubeforge_workqueue_depth": ("gauge", "kubeforge_workqueue_depth", {"queue": "modeldeployment"}),
        "kubeforge_workqueue_wait_seconds": (
            "histogram",
            "kubeforge_workqueue_wait_seconds_count",
            {"queue": "modeldeployment"},
        ),
        "kubeforge_workqueue_retries": (
            "counter",
            "kubeforge_workqueue_retries_total",
            {"queue": "modeldeployment"},
        ),
        "kubeforge_leader": ("gauge", "kubeforge_leader", {"identity": "kubeforge-0"}),
        "kubeforge_cache_objects": ("gauge", "kubeforge_cache_objects", {"kind": "Pod"}),
    }
    for family, (type_, sample, labels) in expected.items():
        assert family in found, family
        assert found[family][0] == type_, family
        assert any(name == sample and got == labels for name, got, _ in found[family][1]), family
    assert value(metrics, "kubeforge_api_calls_total", verb="get") == 3
    assert value(metrics, "kubeforge_cache_objects", kind="Pod") == 4
    assert value(metrics, "kubeforge_workqueue_retries_total", queue="modeldeployment") == 1
    # the process and the interpreter: CPU, memory, GC, version
    for family in ("process_cpu_seconds", "process_resident_memory_bytes", "python_gc_collections"):
        assert family in found, family
    assert found["python_info"][0] == "gauge"


def test_api_calls_and_cache_are_read_at_scrape_time() -> None:
    calls: Counter[str] = Counter()
    cached = {"Deployment": 1}
    metrics = OperatorMetrics(api_calls=calls, cache_objects=lambda: cached)
    calls["apply"] += 5
    cached["Deployment"] = 7
    assert value(metrics, "kubeforge_api_calls_total", verb="apply") == 5
    assert value(metrics, "kubeforge_cache_objects", kind="Deployment") == 7


@pytest.mark.parametrize(
    ("reason", "label"),
    [
        (None, "Unknown"),  # the old three-argument observe()
        ("Forbidden", "Forbidden"),
        ("a reason with spaces", "Other"),  # never an unbounded label value
        ("", "Other"),
    ],
)
def test_errors_are_counted_by_a_low_cardinality_reason(reason: str | None, label: str) -> None:
    metrics = OperatorMetrics()
    metrics.observe("ModelDeployment", 0.1, False, reason)
    assert value(metrics, "kubeforge_reconcile_errors_total", kind="ModelDeployment", reason=label) == 1
    assert value(metrics, "kubeforge_reconcile_total", kind="ModelDeployment") == 1


def test_reconciling_counts_by_the_surfaced_condition_reason_or_the_exception_class() -> None:
    metrics = OperatorMetrics()
    with metrics.reconciling("TrainingJob"):
        pass
    with pytest.raises(Surfaced), metrics.reconciling("TrainingJob"):
        raise Surfaced("ChildConflict: Service ns/x is someone else's", reason="ChildConflict")
    with pytest.raises(KeyError), metrics.reconciling("TrainingJob"):
        raise KeyError("spec")
    assert value(metrics, "kubeforge_reconcile_total", kind="TrainingJob") == 3
    assert value(metrics, "kubeforge_reconcile_duration_seconds_count", kind="TrainingJob") == 3
    for reason in ("ChildConflict", "KeyError"):
        assert value(metrics, "kubeforge_reconcile_errors_total", kind="TrainingJob", reason=reason) == 1


@sync
async def test_queue_depth_wait_time_and_retries_follow_the_queue() -> None:
    metrics = OperatorMetrics()
    clock = FakeClock()
    hooks = metrics.queue_hooks("test", clock=clock)
    release = asyncio.Event()
    failed: set[str] = set()

    async def reconcile(key: str) -> None:
        await release.wait()
        if key == "b" and key not in failed:
            failed.add(key)
            raise RuntimeError("first try of b fails")

    queue: WorkQueue[str] = WorkQueue(
        "test", reconcile, workers=1, backoff=Backoff(base=0.01, jitter=0), hooks=hooks
    )
    depth = ("kubeforge_workqueue_depth", {"queue": "test"})
    waits = ("kubeforge_workqueue_wait_seconds_count", {"queue": "test"})
    waited = ("kubeforge_workqueue_wait_seconds_sum", {"queue": "test"})
    assert value(metrics, depth[0], **depth[1]) == 0
    queue.add("a")
    queue.add("b")
    queue.add("a")  # coalesced: still two keys waiting
    assert value(metrics, depth[0], **depth[1]) == 2
    clock.now += 2.5  # both waited 2.5 s before the worker started
    queue.start()
    try:
        await _until(lambda: value(metrics, depth[0], **depth[1]) == 1)  # "a" picked, "b" waits
        assert value(metrics, waits[0], **waits[1]) == 1
        assert value(metrics, waited[0], **waited[1]) == 2.5
        release.set()
        await _until(lambda: queue.processed == 3 and queue.idle())  # a, b (fails), b (retried)
        assert value(metrics, depth[0], **depth[1]) == 0
        assert value(metrics, waits[0], **waits[1]) == 3
        assert value(metrics, waited[0], **waited[1]) == 5.0  # the retry waited no (fake) time
        assert value(metrics, "kubeforge_workqueue_retries_total", queue="test") == 1
    finally:
        await queue.stop()


def test_an_enqueue_time_is_dropped_when_the_key_is_picked() -> None:
    metrics = OperatorMetrics()
    hooks = metrics.queue_hooks("test", clock=FakeClock())
    for i in range(1000):
        hooks.enqueued(i)
        hooks.picked(i)
    hooks.picked("never enqueued")  # no wait to observe, no error
    assert value(metrics, "kubeforge_workqueue_depth", queue="test") == 0
    assert value(metrics, "kubeforge_workqueue_wait_seconds_count", queue="test") == 1000
    assert hooks.waiting() == 0


def test_set_leader_flips_the_gauge() -> None:
    metrics = OperatorMetrics(identity="kubeforge-1")
    assert value(metrics, "kubeforge_leader", identity="kubeforge-1") is None  # no election yet
    metrics.set_leader(True)
    assert value(metrics, "kubeforge_leader", identity="kubeforge-1") == 1
    metrics.set_leader(False)
    assert value(metrics, "kubeforge_leader", identity="kubeforge-1") == 0


def test_two_operators_in_one_process_do_not_share_metrics() -> None:
    first, second = OperatorMetrics(identity="a"), OperatorMetrics(identity="b")
    first.observe("ModelDeployment", 0.1, True)
    first.set_leader(True)
    second.set_leader(False)
    assert value(first, "kubeforge_reconcile_total", kind="ModelDeployment") == 1
    assert value(second, "kubeforge_reconcile_total", kind="ModelDeployment") is None
    assert value(first, "kubeforge_leader", identity="a") == 1
    assert value(second, "kubeforge_leader", identity="a") is None
    assert value(second, "kubeforge_leader", identity="b") == 0


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


@sync
async def test_serve_metrics_answers_get_metrics_over_a_socket() -> None:
    metrics = OperatorMetrics(api_calls=Counter(get=1))
    metrics.observe("ModelDeployment", 0.01, True)
    server = await serve_metrics(metrics, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        status, content_type, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        missing, _, _ = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/other")
    finally:
        server.close()
        await server.wait_closed()
    assert (status, content_type) == (200, CONTENT_TYPE_LATEST)
    names = {f.name for f in text_string_to_metric_families(body)}
    assert {"kubeforge_reconcile", "kubeforge_api_calls", "process_cpu_seconds"} <= names
    assert missing == 404


def test_the_e2e_and_bench_readers_parse_the_exposition(monkeypatch: Any) -> None:
    """e2e/operator_proc.py and bench/harness.py read these samples with their own small parsers."""
    from bench.harness import OperatorProcess
    from e2e.operator_proc import parse_prometheus

    metrics = OperatorMetrics(api_calls=Counter(get=4, apply=2, status=1))
    metrics.observe("ModelDeployment", 0.01, True)
    metrics.observe("ModelDeployment", 0.01, True)
    text = metrics.render()

    samples = parse_prometheus(text)
    assert sum(v for n, _, v in samples if n == "kubeforge_reconcile_total") == 2
    calls = {labels["verb"]: v for n, labels, v in samples if n == "kubeforge_api_calls_total"}
    assert calls == {"get": 4, "apply": 2, "status": 1}

    class Response:
        def __enter__(self) -> Response:
            return self

        def __exit__(self, *_: object) -> None:
            pass

        def read(self) -> bytes:
            return text.encode()

    monkeypatch.setattr("urllib.request.urlopen", lambda *_, **__: Response())
    op = OperatorProcess(process=None, metrics_port=1)  # type: ignore[arg-type]
    assert op.writes() == 3  # apply and status; get is a read
    assert sum(v for k, v in op.metrics().items() if k.startswith("kubeforge_reconcile_total")) == 2
