"""kopf registrations: every watch event feeds the cache and enqueues the owning object.

No change-detection handlers (on.create/on.update) are used: they keep their diff base in the
user's object. Watch events plus a level-triggered reconcile need no state in the object at all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from kubeforge import GROUP, VERSION
from kubeforge.builders.meta import OWNER_KIND_LABEL, OWNER_NAME_LABEL
from kubeforge.controllers.context import Context
from kubeforge.controllers.metrics import Timer, serve_metrics
from kubeforge.controllers.modeldeployment import reconcile_model_deployment
from kubeforge.controllers.trainingjob import reconcile_training_job
from kubeforge.controllers.workqueue import WorkQueue
from kubeforge.k8s import resources as r
from kubeforge.k8s.client import Kube, load_api_client
from kubeforge.settings import Settings

log = logging.getLogger(__name__)
Key = tuple[str, str]
CHILD_EVENT_DELAY = 0.5  # seconds

# (resource, kind of the owner it belongs to or None for our own kinds)
CHILDREN = (r.DEPLOYMENT, r.SERVICE, r.PDB, r.HPA, r.JOB, r.POD)


class Runtime:
    """The operator's long-lived state, kept in kopf's memo."""

    def __init__(self, ctx: Context, workers: int) -> None:
        self.ctx = ctx
        self.md_queue: WorkQueue[Key] = WorkQueue(
            "modeldeployment", self._md, workers, hooks=ctx.metrics.queue_hooks("modeldeployment")
        )
        self.tj_queue: WorkQueue[Key] = WorkQueue(
            "trainingjob", self._tj, workers, hooks=ctx.metrics.queue_hooks("trainingjob")
        )
        self.metrics_server: asyncio.Server | None = None
        self.resync_task: asyncio.Task[None] | None = None

    async def resync_forever(self, period: float) -> None:
        """Reconcile every object every `period` seconds, like controller-runtime's SyncPeriod.

        Watches already deliver every change; this catches what sends no event (time passing,
        Triton's model state) and proves idempotence: an unchanged object costs no write.
        """
        while True:
            await asyncio.sleep(period)
            for ns, name in self.ctx.cache.keys(r.MODEL_DEPLOYMENT.kind):
                self.md_queue.add((ns, name))
            for ns, name in self.ctx.cache.keys(r.TRAINING_JOB.kind):
                self.tj_queue.add((ns, name))

    async def _md(self, key: Key) -> float | None:
        return await self._timed("ModelDeployment", reconcile_model_deployment, key)

    async def _tj(self, key: Key) -> float | None:
        return await self._timed("TrainingJob", reconcile_training_job, key)

    async def _timed(self, kind: str, fn: Any, key: Key) -> float | None:
        timer = Timer()
        ok = False
        try:
            result: float | None = await fn(self.ctx, key)
            ok = True
            return result
        finally:
            self.ctx.metrics.observe(kind, timer.elapsed(), ok)

    def enqueue_owner(self, obj: dict[str, Any]) -> None:
        """A child changed: reconcile its owner shortly, once for a burst of child events.

        A rollout sends a storm of Deployment, ReplicaSet and pod events; folding them into one
        reconcile CHILD_EVENT_DELAY later writes the owner's status once instead of per event.
        """
        labels = obj["metadata"].get("labels") or {}
        owner_kind, owner_name = labels.get(OWNER_KIND_LABEL), labels.get(OWNER_NAME_LABEL)
        key = (obj["metadata"].get("namespace", ""), owner_name or "")
        if owner_kind == "modeldeployment":
            self.md_queue.add_after(key, CHILD_EVENT_DELAY)
        elif owner_kind == "trainingjob":
            self.tj_queue.add_after(key, CHILD_EVENT_DELAY)


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo.runtime
    return runtime


async def _prefill(ctx: Context, namespaces: tuple[str, ...]) -> None:
    """List every child kind once before reconciling, so a cache miss means 'absent'."""
    for resource in (*CHILDREN, r.MODEL_DEPLOYMENT, r.TRAINING_JOB):
        selector = None if resource in (r.MODEL_DEPLOYMENT, r.TRAINING_JOB) else OWNER_KIND_LABEL
        for ns in namespaces or (None,):
            for obj in await ctx.kube.list(resource, ns, label_selector=selector):
                obj.setdefault("apiVersion", resource.api_version)
                obj.setdefault("kind", resource.kind)
                ctx.cache.upsert(resource.kind, obj)


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    settings.posting.enabled = False  # we post our own, meaningful Events
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    # no cluster-wide scanning of namespaces and CRDs: the chart installs the CRDs before the operator
    # starts, and a namespaced install has no right to list either (kopf would retry 403s for a minute)
    settings.scanning.disabled = True
    options = memo.options
    op_settings: Settings = options["settings"]
    # one API call in flight per reconcile worker and child, at most: threads for the sync client
    workers = options["workers"]
    kube = Kube(
        load_api_client(pool_size=4 * workers), field_manager=op_settings.field_manager, workers=4 * workers
    )
    ctx = Context(kube=kube, settings=op_settings)
    ctx.metrics.api_calls = kube.calls
    runtime = Runtime(ctx, workers=options["workers"])
    memo.runtime = runtime
    await _prefill(ctx, op_settings.namespaces)
    runtime.md_queue.start()
    runtime.tj_queue.start()
    runtime.resync_task = asyncio.create_task(runtime.resync_forever(op_settings.resync_seconds))
    if options["metrics_port"]:
        runtime.metrics_server = await serve_metrics(
            ctx.metrics, options["metrics_host"], options["metrics_port"]
        )
    log.info("kubeforge started: %d objects cached", sum(ctx.cache.count(x.kind) for x in CHILDREN))


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    if runtime.resync_task is not None:
        runtime.resync_task.cancel()
    await runtime.md_queue.stop()
    await runtime.tj_queue.stop()
    if runtime.metrics_server is not None:
        runtime.metrics_server.close()
    runtime.ctx.kube.close()


def _on_watch_event(kind: str, event: Any, runtime: Runtime) -> dict[str, Any] | None:
    obj = event.get("object")
    if not obj:
        return None
    meta = obj["metadata"]
    if event.get("type") == "DELETED":
        runtime.ctx.cache.remove(kind, meta.get("namespace", ""), meta["name"])
    else:
        runtime.ctx.cache.upsert(kind, obj)
    return dict(obj)


def _on_owner_event(kind: str, queue: WorkQueue[Key], event: Any, runtime: Runtime) -> None:
    obj = _on_watch_event(kind, event, runtime)
    if not obj:
        return
    key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
    if event.get("type") == "DELETED":
        queue.forget(key)  # its backoff and timers go with it; the children go with the garbage collector
    else:
        queue.add(key)


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def model_deployment_event(event: Any, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    _on_owner_event(r.MODEL_DEPLOYMENT.kind, runtime.md_queue, event, runtime)


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def training_job_event(event: Any, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    _on_owner_event(r.TRAINING_JOB.kind, runtime.tj_queue, event, runtime)


def _register_child(resource: r.Resource) -> None:
    async def child_event(event: Any, memo: Any, **_: Any) -> None:
        runtime = _runtime(memo)
        obj = _on_watch_event(resource.kind, event, runtime)
        if obj:
            runtime.enqueue_owner(obj)

    child_event.__name__ = f"{resource.kind.lower()}_event"
    kopf.on.event(
        resource.api_version,
        resource.plural,
        labels={OWNER_KIND_LABEL: kopf.PRESENT},
        id=child_event.__name__,
    )(child_event)


for _child in CHILDREN:
    _register_child(_child)
