"""Control-plane benchmarks: reconcile latency vs the floor, throughput and scale, memory, steady state."""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes import client as k8s_client
from kubernetes import watch

from bench.harness import OperatorProcess, percentile
from kubeforge.api import ModelDeployment, TrainingJob
from kubeforge.builders.autoscaling import build_hpa
from kubeforge.builders.modeldeployment import build_service, build_triton_deployment
from kubeforge.builders.trainingjob import build_headless_service, build_worker_job
from kubeforge.k8s import resources as r
from kubeforge.k8s.client import ApiError, Kube
from kubeforge.settings import Settings


def md_body(namespace: str, name: str) -> dict[str, Any]:
    """The benchmark's ModelDeployment: one CPU Triton pod with HPA autoscaling (3 children)."""
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "models": [{"name": "m", "source": "https://models.example/m.tar.gz", "format": "python",
                        "config": {"maxBatchSize": 8, "dynamicBatching": {"maxQueueDelayMicroseconds": 100}}}],
            "replicas": 1,
            "resources": {"cpu": "100m", "memory": "128Mi"},
            "autoscaling": {"minReplicas": 1, "maxReplicas": 3, "targets": {"queueTimeMicroseconds": 20000}},
        },
    }  # fmt: skip


def tj_body(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"image": "trainer:bench", "workers": 2, "resources": {"cpu": "100m", "memory": "128Mi"}},
    }


class StatusWatch:
    """Records when each object of a kind first shows status.observedGeneration (its reconcile is done)."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        plural: str,
        namespace: str,
        done: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        self.seen: dict[str, float] = {}
        self._api = k8s_client.CustomObjectsApi(api)
        self._plural = plural
        self._namespace = namespace
        self._done = done or (lambda obj: bool((obj.get("status") or {}).get("observedGeneration")))
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        w = watch.Watch()
        rv = self._api.list_namespaced_custom_object(
            "kubeforge.io", "v1alpha1", self._namespace, self._plural
        )["metadata"]["resourceVersion"]
        self._ready.set()
        while not self._stop.is_set():
            for event in w.stream(self._api.list_namespaced_custom_object, "kubeforge.io", "v1alpha1", self._namespace, self._plural,
                                  resource_version=rv, timeout_seconds=5, allow_watch_bookmarks=True):  # fmt: skip
                obj = event["object"]
                rv = obj["metadata"]["resourceVersion"]
                if event["type"] == "BOOKMARK":
                    continue
                name = obj["metadata"]["name"]
                if name not in self.seen and event["type"] != "DELETED" and self._done(obj):
                    self.seen[name] = time.perf_counter()
                if self._stop.is_set():
                    break

    def wait(self, names: list[str], timeout: float) -> float:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if all(n in self.seen for n in names):
                return max(self.seen[n] for n in names)
            time.sleep(0.01)
        missing = [n for n in names if n not in self.seen]
        raise TimeoutError(f"{len(missing)} of {len(names)} not reconciled, e.g. {missing[:3]}")

    def stop(self) -> None:
        self._stop.set()


async def ensure_namespace(kube: Kube, name: str) -> None:
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    try:
        await kube.create(ns)
    except ApiError as err:
        if err.status != 409:  # already there is fine
            raise


async def floor_one(kube: Kube, namespace: str, name: str, settings: Settings) -> float:
    """What a bare client does for one object: create it, apply its children, write its status."""
    start = time.perf_counter()
    created = await kube.create(md_body(namespace, name))
    md = ModelDeployment.model_validate(created)
    children = [build_triton_deployment(md, settings), build_service(md), build_hpa(md)]
    # as the operator does: the children concurrently, then the status
    await asyncio.gather(*(kube.apply(child) for child in children if child is not None))
    await kube.patch_status(
        r.MODEL_DEPLOYMENT, namespace, name, {"observedGeneration": 1, "phase": "Progressing"}
    )
    return time.perf_counter() - start


async def floor_training_job(kube: Kube, namespace: str, name: str) -> None:
    """What a bare client does for one TrainingJob: create it, its Service and first Job, its status."""
    created = await kube.create(tj_body(namespace, name))
    tj = TrainingJob.model_validate(created)
    await asyncio.gather(
        kube.apply(build_headless_service(tj)), kube.apply(build_worker_job(tj, 0, suspend=False))
    )
    await kube.patch_status(r.TRAINING_JOB, namespace, name, {"observedGeneration": 1, "phase": "Pending"})


async def floor_burst(
    kube: Kube, namespace: str, mds: int, tjs: int, concurrency: int = 16
) -> dict[str, Any]:
    """The same burst done by a bare client (no watch, no cache, no status logic): the throughput floor."""
    await ensure_namespace(kube, namespace)
    settings = Settings()
    work: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for i in range(mds):
        work.put_nowait(("md", i))
    for i in range(tjs):
        work.put_nowait(("tj", i))

    async def worker() -> None:
        while not work.empty():
            kind, i = work.get_nowait()
            if kind == "md":
                await floor_one(kube, namespace, f"md-{i}", settings)
            else:
                await floor_training_job(kube, namespace, f"tj-{i}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"modeldeployments": mds, "trainingjobs": tjs, "all_done_s": time.perf_counter() - start}


async def latency_vs_floor(
    kube: Kube, api: k8s_client.ApiClient, count: int, op_ns: str, floor_ns: str
) -> dict[str, Any]:
    """Create `count` objects one by one for the operator, and `count` by the bare client, interleaved."""
    await ensure_namespace(kube, op_ns)
    await ensure_namespace(kube, floor_ns)
    watcher = StatusWatch(api, "modeldeployments", op_ns)
    settings = Settings()
    op: list[float] = []
    floor: list[float] = []
    try:
        for i in range(count):
            name = f"lat-{i}"
            start = time.perf_counter()
            await kube.create(md_body(op_ns, name))
            op.append(watcher.wait([name], timeout=60) - start)
            floor.append(await floor_one(kube, floor_ns, f"floor-{i}", settings))
    finally:
        watcher.stop()
    result = {
        "count": count,
        "operator_p50_ms": percentile(op, 50) * 1000,
        "operator_p99_ms": percentile(op, 99) * 1000,
        "floor_p50_ms": percentile(floor, 50) * 1000,
        "floor_p99_ms": percentile(floor, 99) * 1000,
    }
    result["ratio_p50"] = result["operator_p50_ms"] / result["floor_p50_ms"]
    result["ratio_p99"] = result["operator_p99_ms"] / result["floor_p99_ms"]
    return result


async def _create_all(kube: Kube, bodies: list[dict[str, Any]], concurrency: int = 16) -> None:
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)

    async def worker() -> None:
        while not queue.empty():
            await kube.create(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def burst(
    kube: Kube, api: k8s_client.ApiClient, namespace: str, mds: int, tjs: int, timeout: float
) -> dict[str, Any]:
    """Create `mds` ModelDeployments and `tjs` TrainingJobs at once; time until all are reconciled."""
    await ensure_namespace(kube, namespace)
    md_watch = StatusWatch(api, "modeldeployments", namespace)
    tj_watch = StatusWatch(
        api, "trainingjobs", namespace, done=lambda o: (o.get("status") or {}).get("phase") is not None
    )
    md_names = [f"md-{i}" for i in range(mds)]
    tj_names = [f"tj-{i}" for i in range(tjs)]
    bodies = [md_body(namespace, n) for n in md_names] + [tj_body(namespace, n) for n in tj_names]
    start = time.perf_counter()
    try:
        await _create_all(kube, bodies)
        created = time.perf_counter() - start
        end = max(md_watch.wait(md_names, timeout), tj_watch.wait(tj_names, timeout) if tj_names else start)
    finally:
        md_watch.stop()
        tj_watch.stop()
    return {
        "modeldeployments": mds,
        "trainingjobs": tjs,
        "create_s": created,
        "all_reconciled_s": end - start,
    }


def _writes_by_verb(op: OperatorProcess) -> dict[str, float]:
    prefix = "kubeforge_api_calls_total"
    return {
        k[len(prefix) :]: v
        for k, v in op.metrics().items()
        if k.startswith(prefix)
        and not any(r in k for r in ('"get"', '"list"', '"discovery"', '"watch"', '"dry_run"'))
    }


def steady_state(
    op: OperatorProcess, seconds: float, settle_window: float, settle_timeout: float = 120
) -> dict[str, Any]:
    """API writes the operator makes while nothing changes (resyncs keep reconciling everything).

    First waits (up to settle_timeout) for a window with no writes at all: pods still starting
    are real changes that the status must follow.
    """
    deadline = time.monotonic() + settle_timeout
    settled = False
    while time.monotonic() < deadline:
        before = op.writes()
        time.sleep(settle_window)
        if op.writes() == before:
            settled = True
            break
    reconciles = "kubeforge_reconcile_total"

    def count() -> float:
        return sum(v for k, v in op.metrics().items() if k.startswith(reconciles))

    before_verbs, before_reconciles = _writes_by_verb(op), count()
    time.sleep(seconds)
    after = _writes_by_verb(op)
    by_verb = {k: after[k] - before_verbs.get(k, 0) for k in after if after[k] - before_verbs.get(k, 0)}
    return {
        "seconds": seconds,
        "settled_first": settled,
        "reconciles": count() - before_reconciles,
        "writes": int(sum(by_verb.values())),
        "writes_by_verb": by_verb,
    }


def copy_body(body: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(body)
