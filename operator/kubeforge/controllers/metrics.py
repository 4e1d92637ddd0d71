"""The operator's own Prometheus metrics, on `prometheus_client`.

Every `OperatorMetrics` owns a `CollectorRegistry` rather than using the library's global one:
tests start several operators in one process, and the global registry refuses a metric name twice.
Counts that other objects already keep (API calls in `Kube.calls`, objects in the cache) are read
when Prometheus scrapes, so the hot path does not change.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress

import prometheus_client as prom
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kubeforge.controllers.workqueue import QueueHooks, Surfaced

# reconcile latency, seconds: a no-op reconcile takes milliseconds, a first apply of every child ~1 s
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# time a ready key waits for a worker: ~0 when idle, up to a full resync of every object when busy
WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# a reason label value: CamelCase condition reasons and class names; anything else is "Other"
_REASON = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


def error_reason(err: BaseException) -> str:
    """The `reason` label of a failed reconcile.

    A surfaced failure's condition reason (ChildConflict, Forbidden, Invalid, ...), else the
    exception's class name: both come from small fixed sets, so the label stays low-cardinality.
    """
    if isinstance(err, Surfaced) and err.reason:
        return err.reason
    return type(err).__name__


def _reason_label(reason: str | None) -> str:
    if reason is None:
        return "Unknown"  # a caller that did not say why
    return reason if _REASON.fullmatch(reason) else "Other"


class QueueMetrics(QueueHooks):
    """One work queue's depth, wait time and retries (see `OperatorMetrics.queue_hooks`).

    The enqueue time of a key is kept only while the key waits in the ready queue, so memory is
    bounded by the queue's own; the depth is the number of such keys.
    """

    def __init__(
        self,
        depth: prom.Gauge,
        wait: prom.Histogram,
        retries: prom.Counter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._depth = depth
        self._wait = wait
        self._retries = retries
        self._clock = clock
        self._enqueued_at: dict[Hashable, float] = {}
        self._depth.set(0)

    def enqueued(self, key: Hashable) -> None:
        self._enqueued_at[key] = self._clock()
        self._depth.set(len(self._enqueued_at))

    def picked(self, key: Hashable) -> None:
        since = self._enqueued_at.pop(key, None)
        self._depth.set(len(self._enqueued_at))
        if since is not None:
            self._wait.observe(max(self._clock() - since, 0.0))

    def retried(self, key: Hashable) -> None:
        self._retries.inc()

    def waiting(self) -> int:
        """Keys whose enqueue time is held: those in the ready queue."""
        return len(self._enqueued_at)


class _ReadAtScrape(Collector):
    """Metrics whose counts live elsewhere, read when Prometheus scrapes."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return self._families({}, {})

    def collect(self) -> Iterable[Metric]:
        cache_objects = self._metrics.cache_objects
        return self._families(self._metrics.api_calls or {}, cache_objects() if cache_objects else {})

    @staticmethod
    def _families(api_calls: Mapping[str, int], cache_objects: Mapping[str, int]) -> list[Metric]:
        calls = CounterMetricFamily("kubeforge_api_calls_total", "API calls by verb.", labels=["verb"])
        for verb, n in sorted(api_calls.items()):
            calls.add_metric([verb], n)
        cached = GaugeMetricFamily(
            "kubeforge_cache_objects", "Objects in the operator's cache by kind.", labels=["kind"]
        )
        for kind, n in sorted(cache_objects.items()):
            cached.add_metric([kind], n)
        return [calls, cached]


class OperatorMetrics:
    """Reconciles, errors by reason, latency, work queues, leadership, API calls, cache size,
    and the process's own (CPU, memory, file descriptors, GC, Python version).

    `api_calls` (the `Kube.calls` counter) and `cache_objects` (a callback giving objects by kind)
    may be set after construction; both are read at scrape time.
    """

    def __init__(
        self,
        identity: str | None = None,
        api_calls: Counter[str] | None = None,
        cache_objects: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.registry = prom.CollectorRegistry()
        # the name leader election goes by; a pod's hostname is its name
        self.identity = identity or socket.gethostname()
        self.api_calls = api_calls
        self.cache_objects = cache_objects
        prom.ProcessCollector(registry=self.registry)
        prom.GCCollector(registry=self.registry)
        prom.PlatformCollector(registry=self.registry)
        registry = self.registry
        self.reconciles = prom.Counter(
            "kubeforge_reconcile_total", "Reconciles by kind.", ["kind"], registry=registry
        )
        self.errors = prom.Counter(
            "kubeforge_reconcile_errors_total",
            "Failed reconciles by kind and reason (a condition reason or an exception class).",
            ["kind", "reason"],
            registry=registry,
        )
        self.duration = prom.Histogram(
            "kubeforge_reconcile_duration_seconds",
            "Reconcile latency by kind.",
            ["kind"],
            buckets=BUCKETS,
            registry=registry,
        )
        self.queue_depth = prom.Gauge(
            "kubeforge_workqueue_depth", "Keys waiting for a worker.", ["queue"], registry=registry
        )
        self.queue_wait = prom.Histogram(
            "kubeforge_workqueue_wait_seconds",
            "Time from a key entering the ready queue to a worker picking it up.",
            ["queue"],
            buckets=WAIT_BUCKETS,
            registry=registry,
        )
        self.queue_retries = prom.Counter(
            "kubeforge_workqueue_retries_total",
            "Retries scheduled after a failed reconcile.",
            ["queue"],
            registry=registry,
        )
        self.leader = prom.Gauge(
            "kubeforge_leader",
            "1 while this replica holds the leader Lease, else 0.",
            ["identity"],
            registry=registry,
        )
        self.replicas = prom.Gauge(
            "kubeforge_modeldeployment_replicas",
            "Replicas of each ModelDeployment: desired (its spec or autoscaler) and ready (serving).",
            ["namespace", "modeldeployment", "state"],
            registry=registry,
        )
        self.watch_refused = prom.Gauge(
            "kubeforge_watch_refused",
            "1 while the API server refuses to list or watch this kind in this namespace ('' for all "
            "namespaces): the RBAC does not grant it; objects that need it cannot be reconciled.",
            ["kind", "namespace"],
            registry=registry,
        )
        registry.register(_ReadAtScrape(self))

    def observe(self, kind: str, seconds: float, ok: bool, reason: str | None = None) -> None:
        """Count one reconcile of `kind` that took `seconds`; a failed one by `reason`."""
        self.reconciles.labels(kind=kind).inc()
        self.duration.labels(kind=kind).observe(seconds)
        if not ok:
            self.errors.labels(kind=kind, reason=_reason_label(reason)).inc()

    @contextmanager
    def reconciling(self, kind: str) -> Iterator[None]:
        """Time and count the reconcile in the `with` block; an exception counts as an error by
        `error_reason`. A cancelled reconcile (shutdown) is not counted."""
        timer = Timer()
        try:
            yield
        except Exception as err:
            self.observe(kind, timer.elapsed(), ok=False, reason=error_reason(err))
            raise
        self.observe(kind, timer.elapsed(), ok=True)

    def queue_hooks(self, queue: str, clock: Callable[[], float] = time.monotonic) -> QueueMetrics:
        """Hooks for the WorkQueue named `queue`: its depth, wait time and retries."""
        return QueueMetrics(
            self.queue_depth.labels(queue=queue),
            self.queue_wait.labels(queue=queue),
            self.queue_retries.labels(queue=queue),
            clock,
        )

    def set_replicas(self, namespace: str, name: str, desired: int, ready: int) -> None:
        """A ModelDeployment's desired and ready replicas, for dashboards (no kube-state-metrics needed)."""
        self.replicas.labels(namespace=namespace, modeldeployment=name, state="desired").set(desired)
        self.replicas.labels(namespace=namespace, modeldeployment=name, state="ready").set(ready)

    def forget_model_deployment(self, namespace: str, name: str) -> None:
        """Drop a deleted ModelDeployment's series (cardinality follows the live objects)."""
        for state in ("desired", "ready"):
            with suppress(KeyError):
                self.replicas.remove(namespace, name, state)

    def set_leader(self, leading: bool) -> None:
        """Whether this replica leads; `kubeforge_leader` has no sample until the first call."""
        self.leader.labels(identity=self.identity).set(1 if leading else 0)

    def render(self) -> str:
        """The Prometheus text exposition of every metric in this registry."""
        return generate_latest(self.registry).decode()


async def serve_metrics(metrics: OperatorMetrics, host: str, port: int) -> asyncio.Server:
    """Serve GET /metrics on the event loop.

    prometheus_client's own servers run a thread (start_http_server) or need a web framework;
    rendering takes a millisecond and reads only memory and /proc, so the loop can do it.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass
            method, target = request.split(b" ")[:2]
            ok = method == b"GET" and target.split(b"?")[0] == b"/metrics"
            body = generate_latest(metrics.registry) if ok else b"not found\n"
            status = b"200 OK" if ok else b"404 Not Found"
            content_type = CONTENT_TYPE_LATEST.encode() if ok else b"text/plain; charset=utf-8"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: " + content_type + b"\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            pass  # a client that sends no request line or hangs up gets nothing
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
