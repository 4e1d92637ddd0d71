"""kopf runs the process (start-up, shutdown on SIGTERM, the liveness endpoint); informers feed the
cache and the work queues; reconcilers run only on the replica that leads.

Why informers of our own rather than kopf's watch handlers: after a 410 kopf lists again without
telling its handlers, so objects deleted in the gap would stay in the cache for ever (see
controllers/informer.py). No change-detection handlers (on.create/on.update) are used either: they
keep their diff base in the user's object. Watch events plus a level-triggered reconcile need no
state in the object at all.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from kubeforge.builders.gateway import GATEWAY_API
from kubeforge.builders.meta import OWNER_KIND_LABEL, OWNER_NAME_LABEL
from kubeforge.controllers.cache import DROPPED_ANNOTATIONS
from kubeforge.controllers.context import Context
from kubeforge.controllers.informer import Informer
from kubeforge.controllers.leader import LeaderElector, LeaseSettings
from kubeforge.controllers.metrics import serve_metrics
from kubeforge.controllers.modeldeployment import (
    KEDA_API,
    LWS_API,
    MONITORING_API,
    reconcile_model_deployment,
)
from kubeforge.controllers.trainingjob import reconcile_training_job
from kubeforge.controllers.workqueue import WorkQueue
from kubeforge.k8s import resources as r
from kubeforge.k8s.client import ApiError, Kube, load_api_client
from kubeforge.settings import Settings

log = logging.getLogger(__name__)
Key = tuple[str, str]
Object = dict[str, Any]
CHILD_EVENT_DELAY = 0.5  # seconds
OPTIONAL_API_SECONDS = 30.0  # how often to look for KEDA's and the Prometheus operator's APIs

OWNERS = (r.MODEL_DEPLOYMENT, r.TRAINING_JOB)
CHILDREN = (r.DEPLOYMENT, r.SERVICE, r.PDB, r.NETWORK_POLICY, r.HPA, r.JOB, r.PVC, r.POD)
# startup waits this long at most for the first list of every kind
STARTUP_SYNC_SECONDS = 60.0
# children whose API exists only where KEDA / the Prometheus operator / LeaderWorkerSet / the Gateway
# API is installed
OPTIONAL_CHILDREN = (
    (r.SCALED_OBJECT, KEDA_API),
    (r.SERVICE_MONITOR, MONITORING_API),
    (r.LEADER_WORKER_SET, LWS_API),
    (r.HTTP_ROUTE, GATEWAY_API),
)


class Runtime:
    """The operator's long-lived state, kept in kopf's memo."""

    def __init__(self, ctx: Context, workers: int, namespaces: tuple[str, ...]) -> None:
        self.ctx = ctx
        ctx.unwatched = self.unwatched
        self.namespaces = namespaces
        self.md_queue: WorkQueue[Key] = WorkQueue(
            "modeldeployment", self._md, workers, hooks=ctx.metrics.queue_hooks("modeldeployment")
        )
        self.tj_queue: WorkQueue[Key] = WorkQueue(
            "trainingjob", self._tj, workers, hooks=ctx.metrics.queue_hooks("trainingjob")
        )
        ctx.prober.on_change = self.md_queue.add  # a new answer from Triton: status follows it
        self.informers: list[Informer] = []
        self.elector: LeaderElector | None = None
        self.metrics_server: asyncio.Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._resync: asyncio.Task[None] | None = None

    # -- events ------------------------------------------------------------------------------------

    def _queue_of(self, kind: str) -> WorkQueue[Key]:
        return self.md_queue if kind == r.MODEL_DEPLOYMENT.kind else self.tj_queue

    def owner_changed(self, type_: str, obj: Object, previous: Object | None = None) -> None:
        """An owner changed: reconcile it, except for what needs no reconcile.

        - Only its status changed (the echo of the operator's own status write, whose response is
          already cached): nothing to do.
        - Its spec changed (a new generation): reconciled `edit_coalesce_seconds` later, so that a
          burst of edits (a script, a GitOps sync of many commits) costs one reconcile, not one
          per edit; an edit while a reconcile runs is folded into the next one either way.
        """
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        queue = self._queue_of(obj["kind"])
        if type_ == "DELETED":
            queue.forget(key)  # its backoff and timers go with it; the children go with the GC
            if obj["kind"] == r.MODEL_DEPLOYMENT.kind:
                self.ctx.metrics.forget_model_deployment(*key)
                self.ctx.prober.forget(key)
        elif previous is None or type_ == "ADDED":
            queue.add(key)
        elif _only_status_changed(previous, obj):
            return
        elif previous["metadata"].get("generation") != meta.get("generation"):
            queue.add_after(key, self.ctx.settings.edit_coalesce_seconds)
        else:
            queue.add(key)

    def child_changed(self, _: str, obj: Object, previous: Object | None = None) -> None:
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

    # -- informers ---------------------------------------------------------------------------------

    def _inform(self, resource: r.Resource) -> list[Informer]:
        """Start list+watch of `resource` in each namespace; children are selected server-side."""
        owner = resource in OWNERS
        started = [
            Informer(
                kube=self.ctx.kube,
                cache=self.ctx.cache,
                resource=resource,
                namespace=ns,
                on_change=self.owner_changed if owner else self.child_changed,
                label_selector=None if owner else OWNER_KIND_LABEL,
                watch_seconds=self.ctx.settings.watch_seconds,
                on_refused=self._watch_refused,
            )
            for ns in self.namespaces or (None,)
        ]
        for informer in started:
            self._tasks.append(asyncio.create_task(informer.run(), name=f"informer {informer.name}"))
        self.informers += started
        return started

    def unwatched(self, kinds: tuple[str, ...], namespace: str) -> list[str]:
        return [
            i.name + (f" ({i.refused.describe()})" if i.refused else "")
            for i in self.informers
            if i.resource.kind in kinds and i.namespace in (None, namespace) and not i.synced.is_set()
        ]

    def _watch_refused(self, informer: Informer, refused: bool) -> None:
        labels = {"kind": informer.resource.kind, "namespace": informer.namespace or ""}
        self.ctx.metrics.watch_refused.labels(**labels).set(1 if refused else 0)

    async def start_informers(self) -> None:
        """Watch owners and children, and wait until every cache is filled (a miss then means absent).

        A kind the API server refuses (403: the RBAC lacks it, e.g. `rbac.keda: false` where KEDA's
        CRDs are installed, or a namespace whose Role was removed) does not hold startup: it is named
        in a log line and `kubeforge_watch_refused`, retried with backoff, and the rest works. So
        does a kind whose first list still fails after STARTUP_SYNC_SECONDS for another reason.
        """
        started = [i for resource in (*OWNERS, *CHILDREN) for i in self._inform(resource)]
        started += await self._inform_optional()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(i.settled.wait() for i in started)), timeout=STARTUP_SYNC_SECONDS
            )
        except TimeoutError:
            pending = ", ".join(i.name for i in started if not i.settled.is_set())
            log.warning(
                "started without a first list of %s after %.0fs; still trying", pending, STARTUP_SYNC_SECONDS
            )
        refused = [i.name for i in started if i.refused is not None]
        if refused:
            log.warning("started without watching %s: the API server refuses it (RBAC)", ", ".join(refused))
        self._tasks.append(asyncio.create_task(self._watch_for_optional_apis(), name="optional APIs"))

    async def _inform_optional(self) -> list[Informer]:
        informed = {i.resource for i in self.informers}
        started: list[Informer] = []
        for resource, api in OPTIONAL_CHILDREN:
            if resource in informed:
                continue
            try:
                served = await self.ctx.kube.api_group_served(api)
            except ApiError as err:
                log.warning("could not tell whether %s is served: %s", api, err)
                continue
            if served:
                log.info("%s is served: watching %s", api, resource.kind)
                started += self._inform(resource)
        return started

    async def _watch_for_optional_apis(self) -> None:
        """KEDA, the Prometheus operator or LWS installed later: start watching their kinds then."""
        while True:
            await asyncio.sleep(OPTIONAL_API_SECONDS)
            await self._inform_optional()

    # -- reconciling -------------------------------------------------------------------------------

    async def start_reconciling(self) -> None:
        """This replica leads (or runs alone): reconcile everything once, then on events."""
        for kind, queue in ((r.MODEL_DEPLOYMENT.kind, self.md_queue), (r.TRAINING_JOB.kind, self.tj_queue)):
            for key in self.ctx.cache.keys(kind):
                queue.add(key)
            queue.start()
        self.ctx.metrics.set_leader(True)
        if self._resync is None:
            self._resync = asyncio.create_task(self.resync_forever(self.ctx.settings.resync_seconds))
            self._tasks.append(self._resync)

    async def stop_reconciling(self) -> None:
        """Leadership lost: stop at once (writes are already refused); keys stay queued."""
        self.ctx.metrics.set_leader(False)
        await self.md_queue.pause()
        await self.tj_queue.pause()

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
        with self.ctx.metrics.reconciling(kind):  # latency, and errors by reason
            result: float | None = await fn(self.ctx, key)
            return result

    # -- shutdown ----------------------------------------------------------------------------------

    async def shutdown(self, seconds: float) -> None:
        """SIGTERM: take no new key, let in-flight reconciles finish within `seconds`, give up the
        Lease (a standby takes over within one retry period), stop watching."""
        finished = all(await asyncio.gather(self.md_queue.drain(seconds), self.tj_queue.drain(seconds)))
        if not finished:
            log.warning("shutdown: reconciles still running after %.0fs were cancelled", seconds)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.elector is not None:
            await self.elector.release()
        if self.metrics_server is not None:
            self.metrics_server.close()
        await self.ctx.prober.close()
        if self.ctx.prometheus is not None:
            await self.ctx.prometheus.aclose()
        await self.ctx.flush_events()
        await self.ctx.kube.aclose()

    def lead(self, lease: LeaseSettings) -> None:
        """Reconcile only while holding the Lease; writes are gated and timed by it (Kube.write_budget)."""
        self.elector = LeaderElector(self.ctx.kube, lease, self.start_reconciling, self.stop_reconciling)
        self.ctx.kube.write_budget = self.elector.write_budget
        self.ctx.metrics.identity = self.elector.identity
        self.ctx.metrics.set_leader(False)
        self._tasks.append(asyncio.create_task(self.elector.run(), name="leader election"))


def _metadata_that_matters(obj: Object) -> tuple[Any, ...]:
    meta = obj["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in DROPPED_ANNOTATIONS}
    return (
        meta.get("uid"),
        meta.get("generation"),
        meta.get("labels") or {},
        annotations,
        meta.get("deletionTimestamp"),
        meta.get("finalizers") or [],
    )


def _only_status_changed(previous: Object, obj: Object) -> bool:
    """Whether `obj` differs from the cached `previous` in its status (and version) alone."""
    return _metadata_that_matters(previous) == _metadata_that_matters(obj)


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo.runtime
    return runtime


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    settings.posting.enabled = False  # we post our own, meaningful Events
    settings.networking.request_timeout = 60
    # kopf watches nothing here (our informers do), so it needs neither namespaces nor CRDs
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
    runtime = Runtime(ctx, workers=workers, namespaces=op_settings.namespaces)
    memo.runtime = runtime
    await runtime.start_informers()
    if options["metrics_port"]:
        runtime.metrics_server = await serve_metrics(
            ctx.metrics, options["metrics_host"], options["metrics_port"]
        )
    lease: LeaseSettings | None = options.get("lease")
    if lease is not None:
        runtime.lead(lease)
    else:
        await runtime.start_reconciling()
    log.info(
        "kubeforge started: %d objects cached%s",
        sum(ctx.cache.count(x.kind) for x in (*OWNERS, *CHILDREN)),
        f", leader election on Lease {lease.namespace}/{lease.name}" if lease else "",
    )


@kopf.on.cleanup()
async def cleanup(memo: Any, **_: Any) -> None:
    await _runtime(memo).shutdown(memo.options.get("shutdown_seconds", 20.0))
