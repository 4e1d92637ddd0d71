"""Reconcile a ModelDeployment: model cache, Triton Deployment (or LeaderWorkerSet), Service, PDB,
autoscaler, ServiceMonitor; then status."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from kubeforge.api.common import ConditionStatus
from kubeforge.api.modeldeployment import ModelDeployment, ModelDeploymentStatus, ModelState, RolloutStatus
from kubeforge.builders import autoscaling
from kubeforge.builders.gateway import GATEWAY_API, build_http_route
from kubeforge.builders.leaderworkerset import (
    LEADER_INDEX,
    WORKER_INDEX_LABEL,
    build_leader_service,
    build_leaderworkerset,
    leaderworkerset_name,
)
from kubeforge.builders.modeldeployment import (
    HTTP_PORT,
    build_pod_disruption_budget,
    build_revision_services,
    build_service,
    build_triton_deployment,
    canary_name,
    endpoints,
    restricted_apis,
    stable_name,
)
from kubeforge.builders.network import build_model_deployment_network_policy
from kubeforge.controllers import canary
from kubeforge.controllers.context import Context
from kubeforge.controllers.failures import settle
from kubeforge.controllers.invalid import load_or_refuse
from kubeforge.controllers.modelcache import FILL_POLL_SECONDS, observe_cache, sweep_cache
from kubeforge.controllers.proposals import trained_model
from kubeforge.controllers.rollout import DEFERRED_RECHECK_SECONDS, annotated, workload_template_hash
from kubeforge.controllers.status_patch import write_status
from kubeforge.controllers.workqueue import Surfaced
from kubeforge.k8s import resources as r
from kubeforge.k8s.client import ApiError
from kubeforge.k8s.semantic import controller_uid
from kubeforge.status.cache import cache_ready, job_finished
from kubeforge.status.conditions import get_condition
from kubeforge.status.gateway import route_summary
from kubeforge.status.gitops import ReconcileFailure
from kubeforge.status.modeldeployment import AutoscalerObservation, Observed, compute_status, stall_check_in
from kubeforge.status.pods import pod_ready

log = logging.getLogger(__name__)
KEDA_API = "keda.sh/v1alpha1"
# the aggregated APIs the autoscalers read: prometheus-adapter, metrics-server, KEDA's metrics server
CUSTOM_METRICS_API = "custom.metrics.k8s.io/v1beta1"
RESOURCE_METRICS_API = "metrics.k8s.io/v1beta1"
EXTERNAL_METRICS_API = "external.metrics.k8s.io/v1beta1"
MODEL_PROBE_SECONDS = 30.0
# a drained canary's pods are being deleted (their deletion also sends events)
CANARY_PODS_GONE_SECONDS = 2.0
MISSING_API_SECONDS = 30.0
# a predecessor's child (same name, deleted owner) is being removed by the garbage collector
PREDECESSOR_RECHECK_SECONDS = 1.0
MONITORING_API = "monitoring.coreos.com/v1"
LWS_API = "leaderworkerset.x-k8s.io/v1"
LWS_NOT_INSTALLED = ReconcileFailure(
    "LeaderWorkerSetNotInstalled",
    "a replica of this ModelDeployment spans several nodes (nodesPerReplica, or its llm's "
    "tensorParallelSize x pipelineParallelSize over gpu.count), which runs as a LeaderWorkerSet, but the "
    f"{LWS_API} API is not served: install LeaderWorkerSet (https://lws.sigs.k8s.io), or fit a replica on "
    "one node",
)

GATEWAY_API_NOT_INSTALLED = ReconcileFailure(
    "GatewayApiNotInstalled",
    f"rollout.canary.gateway names a Gateway, but the {GATEWAY_API} API is not served: install the "
    "Gateway API's CRDs (standard channel v1.4 or later) and an implementation, or remove "
    "rollout.canary.gateway (a canary then splits by replicas)",
)


def _serving_child(md: ModelDeployment) -> tuple[r.Resource, str]:
    """The workload that runs the servers: the Deployment, or the LeaderWorkerSet of multi-node replicas."""
    if md.spec.replica_nodes > 1:
        return r.LEADER_WORKER_SET, leaderworkerset_name(md)
    return r.DEPLOYMENT, md.metadata.name


async def _withheld(ctx: Context, md: ModelDeployment) -> None:
    """While the model cache of new sources fills, the live Deployment (or LeaderWorkerSet) keeps its
    template (the pods serve the previous models); only its replicas follow the spec (`kubectl scale`,
    the autoscaler), through the /scale subresource."""
    resource, name = _serving_child(md)
    live = ctx.cache.get(resource.kind, md.metadata.namespace or "", name)
    if live is None or controller_uid(live) != md.metadata.uid or live["metadata"].get("deletionTimestamp"):
        return
    if (live.get("spec") or {}).get("replicas") != md.spec.replicas:
        await ctx.kube.scale(resource, md.metadata.namespace or "", name, md.spec.replicas)


@dataclass(frozen=True)
class AppliedWorkload:
    deployment: dict[str, Any] | None = None
    leaderworkerset: dict[str, Any] | None = None
    # why neither was applied: the LeaderWorkerSet API is not served
    failure: ReconcileFailure | None = None
    # why the live one keeps its template: it waits for an operator rollout slot (controllers/rollout.py)
    deferred: str | None = None
    # the canary revision's Deployment and status.rollout (spec.rollout.canary; controllers/canary.py)
    canary: dict[str, Any] | None = None
    rollout: RolloutStatus | None = None
    requeue: float | None = None
    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)


async def _apply_workload(
    ctx: Context, md: ModelDeployment, desired: dict[str, Any], observed_generation: int | None
) -> tuple[dict[str, Any], str | None]:
    """Apply the serving workload, unless it waits for an operator rollout slot: (live or applied, why)."""
    rollouts = ctx.rollouts
    assert rollouts is not None
    meta = desired["metadata"]
    live = ctx.cache.get(desired["kind"], meta["namespace"], meta["name"])
    decision = rollouts.decide(ctx.cache, desired, live, md.metadata.generation, observed_generation)
    if decision.operator_rollout:
        async with rollouts.lock:  # the slot is taken by the apply: decide again under the lock
            decision = rollouts.decide(ctx.cache, desired, live, md.metadata.generation, observed_generation)
            if decision.desired is not None:
                applied = await ctx.ensure(decision.desired)
                log.info(
                    "%s %s/%s: operator rollout of a new pod template started",
                    desired["kind"],
                    meta["namespace"],
                    meta["name"],
                )
                return applied, None
    if decision.desired is None:
        assert live is not None and decision.deferred is not None
        return live, decision.deferred
    return await ctx.ensure(decision.desired), None


async def _workload(
    ctx: Context, md: ModelDeployment, status: ModelDeploymentStatus | None
) -> AppliedWorkload:
    """Apply the Deployment, or the LeaderWorkerSet when a replica spans nodes, and remove the other.

    The new one is applied before the old one is deleted, and the old one stays when the new one
    cannot be applied: a switch never leaves the ModelDeployment with neither.
    """
    ns, name, uid = md.metadata.namespace or "", md.metadata.name, md.metadata.uid
    assert uid is not None
    observed_generation = status.observed_generation if status else None
    if md.spec.replica_nodes > 1:
        # a "no" is asked again at once (ttl 0): LWS installed a moment ago must not wait for the cache
        if not (await ctx.kube.api_group_served(LWS_API) or await ctx.kube.api_group_served(LWS_API, ttl=0)):
            return AppliedWorkload(failure=LWS_NOT_INSTALLED)
        try:
            lws, deferred = await _apply_workload(
                ctx, md, build_leaderworkerset(md, ctx.settings), observed_generation
            )
        except ApiError as err:
            if err.status != 404:
                raise
            return AppliedWorkload(failure=LWS_NOT_INSTALLED)  # uninstalled since discovery was last asked
        await ctx.ensure_absent(r.DEPLOYMENT, ns, name, uid)
        return AppliedWorkload(leaderworkerset=lws, deferred=deferred)
    desired = build_triton_deployment(md, ctx.settings)
    previous = status.rollout if status else None
    live = _ours(ctx, md, r.DEPLOYMENT, name)
    if canary.wanted(md, desired, live, previous, observed_generation):
        assert live is not None
        applied = await _canary_workload(ctx, md, desired, live, previous)
    else:
        deployment, deferred = await _apply_workload(ctx, md, desired, observed_generation)
        rollout, events = canary.settled(md, previous, workload_template_hash(desired))
        rollout, requeue = await _retire_canary(ctx, md, previous, rollout)
        action = _action(md)
        if action is not None:  # a verb with no canary to act on is dropped, and said so
            why = f"{canary.ACTION_ANNOTATION}={action} ignored: no canary rollout is under way"
            events.append(("Warning", "RolloutActionIgnored", why))
            await _acted(ctx, md, action)
        applied = AppliedWorkload(
            deployment=deployment, deferred=deferred, rollout=rollout, requeue=requeue, events=events
        )
    await ctx.ensure_absent(r.LEADER_WORKER_SET, ns, leaderworkerset_name(md), uid)
    return applied


def _action(md: ModelDeployment) -> str | None:
    return (md.metadata.annotations or {}).get(canary.ACTION_ANNOTATION)


async def _acted(ctx: Context, md: ModelDeployment, action: str | None) -> None:
    if action is not None:
        await ctx.kube.remove_annotation(
            r.MODEL_DEPLOYMENT, md.metadata.namespace or "", md.metadata.name, canary.ACTION_ANNOTATION
        )


async def _canary_workload(
    ctx: Context,
    md: ModelDeployment,
    desired: dict[str, Any],
    live: dict[str, Any],
    previous: RolloutStatus | None,
) -> AppliedWorkload:
    """One move of a canary rollout: the canary Deployment at its step's replicas, the stable at the rest."""
    ns, name, uid = md.metadata.namespace or "", md.metadata.name, md.metadata.uid
    assert uid is not None and ctx.prometheus is not None
    live_canary = _ours(ctx, md, r.DEPLOYMENT, canary_name(md))
    pods = ctx.cache.owned(r.POD.kind, "modeldeployment", ns, name)
    plan = await canary.plan(
        md, ctx.settings, desired, live, live_canary, previous, pods, ctx.prometheus.query, ctx.now()
    )
    canary_deployment, status, requeue = None, plan.status, plan.requeue
    if plan.canary is None:
        # first, so that a promoted stable's new pods find the GPUs the canary held
        retired, draining = await _retire_canary(ctx, md, previous, plan.status)
        status = retired or plan.status
        if draining is not None:
            requeue = draining if requeue is None else min(requeue, draining)
    else:
        canary_deployment = await ctx.ensure(plan.canary)
    if plan.stable is not None:
        deployment = await ctx.ensure(annotated(plan.stable, md.metadata.generation, None))
    else:
        deployment = live
        if (live.get("spec") or {}).get("replicas") != plan.stable_replicas:
            await ctx.kube.scale(r.DEPLOYMENT, ns, name, plan.stable_replicas)
    await _acted(ctx, md, plan.acted)
    return AppliedWorkload(
        deployment=deployment, canary=canary_deployment, rollout=status, requeue=requeue, events=plan.events
    )


async def _retire_canary(
    ctx: Context, md: ModelDeployment, previous: RolloutStatus | None, rollout: RolloutStatus | None
) -> tuple[RolloutStatus | None, float | None]:
    """No canary runs: delete its Deployment, unless its pods still drain (a Gateway's route moved off
    them a moment ago; controllers/canary.py `ended`): (status.rollout, seconds to look again).
    The route keeps them out until the last of them is gone: the Service `<name>` selects them too."""
    ns, uid, now = md.metadata.namespace or "", md.metadata.uid, ctx.now()
    assert uid is not None
    rollout = canary.ended(md, previous, rollout, _ours(ctx, md, r.DEPLOYMENT, canary_name(md)), now)
    left = canary.drain_left(rollout, now)
    if left is not None:
        return rollout, left
    await ctx.ensure_absent(r.DEPLOYMENT, ns, canary_name(md), uid)
    pods = ctx.cache.owned(r.POD.kind, "modeldeployment", ns, md.metadata.name)
    if rollout is not None and rollout.canary_drain_until is not None and canary.canary_pods(pods):
        return rollout, CANARY_PODS_GONE_SECONDS
    return canary.drained(rollout), None


async def _route(
    ctx: Context, md: ModelDeployment, rollout: RolloutStatus | None
) -> tuple[str | None, ReconcileFailure | None]:
    """The revision Services and the HTTPRoute of rollout.canary.gateway (or their removal): what the
    route's Gateway says of it, and why it cannot be applied."""
    ns, uid = md.metadata.namespace or "", md.metadata.uid
    assert uid is not None
    services = build_revision_services(md)
    for service in services:
        await ctx.ensure(service)
    if not services:
        for name in (stable_name(md), canary_name(md)):
            await ctx.ensure_absent(r.SERVICE, ns, name, uid)
    route = build_http_route(md, rollout)
    if not await ctx.kube.api_group_served(GATEWAY_API):
        served = route is not None and await ctx.kube.api_group_served(GATEWAY_API, ttl=0)
        if not served:
            return None, GATEWAY_API_NOT_INSTALLED if route is not None else None
    await _ensure_optional(ctx, r.HTTP_ROUTE, md, route)
    if route is None:
        return None, None
    live = _ours(ctx, md, r.HTTP_ROUTE, md.metadata.name)
    return route_summary(route, live), None


def _ours(ctx: Context, md: ModelDeployment, resource: r.Resource, name: str) -> dict[str, Any] | None:
    cached = ctx.cache.get(resource.kind, md.metadata.namespace or "", name)
    return cached if cached is not None and controller_uid(cached) == md.metadata.uid else None


async def _ensure_optional(
    ctx: Context, resource: r.Resource, md: ModelDeployment, desired: dict[str, Any] | None
) -> None:
    """A child named after the ModelDeployment that the spec may or may not want."""
    assert md.metadata.uid is not None
    await ctx.ensure_optional(
        resource, desired, md.metadata.namespace or "", md.metadata.name, md.metadata.uid
    )


async def _autoscaler(ctx: Context, md: ModelDeployment) -> AutoscalerObservation | None:
    """Apply the HPA or ScaledObject the spec asks for (removing the other) and observe it."""
    ns, name = md.metadata.namespace or "", md.metadata.name
    await _ensure_optional(ctx, r.HPA, md, autoscaling.build_hpa(md))
    keda_served = await ctx.kube.api_group_served(KEDA_API)
    scaled_object = autoscaling.build_scaled_object(md, ctx.settings)
    if keda_served:
        await _ensure_optional(ctx, r.SCALED_OBJECT, md, scaled_object)
    if md.spec.autoscaling is None:
        return None
    if scaled_object is None:
        hpa = ctx.cache.get(r.HPA.kind, ns, name)
        missing = await _missing_metrics_api(ctx, md)
        if missing is not None:
            return AutoscalerObservation("hpa", hpa, missing_reason=missing[0], missing_message=missing[1])
        return AutoscalerObservation("hpa", hpa)
    if not keda_served:
        return AutoscalerObservation(
            "keda",
            missing_reason="KedaNotInstalled",
            missing_message="autoscaling needs KEDA (engine keda or minReplicas 0) but the keda.sh/v1alpha1 "
            "API is not served: install KEDA, or use engine hpa with minReplicas >= 1",
        )
    if not await ctx.kube.api_group_served(EXTERNAL_METRICS_API):
        return AutoscalerObservation(
            "keda",
            ctx.cache.get(r.SCALED_OBJECT.kind, ns, name),
            missing_reason="KedaMetricsServerMissing",
            missing_message=f"KEDA's CRDs are installed but {EXTERNAL_METRICS_API} is not served: KEDA's "
            "metrics API server (keda-operator-metrics-apiserver) is missing or down, so the HPA KEDA "
            "creates cannot read the trigger's value",
        )
    return AutoscalerObservation("keda", ctx.cache.get(r.SCALED_OBJECT.kind, ns, name))


async def _missing_metrics_api(ctx: Context, md: ModelDeployment) -> tuple[str, str] | None:
    """Whether an API the HPA's metrics come from is not served: (reason, message), or None."""
    pairs = autoscaling.targets(md.spec.autoscaling) if md.spec.autoscaling else []
    triton_metrics = any(metric is not None for metric, _ in pairs)
    cpu = any(metric is None for metric, _ in pairs)
    if triton_metrics and not await ctx.kube.api_group_served(CUSTOM_METRICS_API):
        return (
            "MetricsApiNotServed",
            f"the HPA reads Triton's metrics from {CUSTOM_METRICS_API}, which is not served: install "
            "prometheus-adapter with the rules in charts/prometheus-adapter-rules.yaml (see the chart's README)",
        )
    if cpu and not await ctx.kube.api_group_served(RESOURCE_METRICS_API):
        return (
            "MetricsApiNotServed",
            f"cpuUtilization needs {RESOURCE_METRICS_API} (metrics-server), which is not served",
        )
    return None


async def _monitoring(ctx: Context, md: ModelDeployment) -> None:
    if not await ctx.kube.api_group_served(MONITORING_API):
        return  # pods carry prometheus.io/* annotations either way
    await _ensure_optional(ctx, r.SERVICE_MONITOR, md, autoscaling.build_service_monitor(md))


def _probe_models(
    ctx: Context, md: ModelDeployment, key: tuple[str, str], pods: list[dict[str, Any]]
) -> tuple[list[ModelState] | None, str | None]:
    """Per-model state from one ready server's repository index, as last read in the background
    (controllers/modelprobe.py: a reconcile never waits for a server); (None, why) when it cannot
    be read."""
    if not ctx.settings.model_probe:
        return None, "model probing is off in the operator settings"
    if "model-repository" in restricted_apis(md):
        # explicit model control: the repository API (load, unload, index) is closed to every client
        return None, "the model repository API is closed in explicit model control mode"
    ready = [p for p in pods if pod_ready(p) and p.get("status", {}).get("podIP")]
    if not ready:
        return None, None
    return ctx.prober.latest(key, f"http://{ready[0]['status']['podIP']}:{HTTP_PORT}")


async def reconcile_model_deployment(ctx: Context, key: tuple[str, str]) -> float | None:
    ns, name = key
    loaded = await load_or_refuse(ctx, r.MODEL_DEPLOYMENT, ModelDeployment, key)
    if loaded is None:
        return None
    body, md = loaded
    # a status a newer release wrote may carry fields this one does not know
    previous = (
        ModelDeploymentStatus.model_validate(body["status"], extra="ignore") if body.get("status") else None
    )

    # the model cache first: with one, the pods of this spec start only once its fill is complete
    (cache,), failure = await settle(observe_cache(ctx, md, previous.cache if previous else None))
    serve = md.spec.cache is None or cache_ready(cache)

    multi_node = md.spec.replica_nodes > 1
    # the children do not depend on each other: apply them concurrently
    (workload, _, _, _, autoscaler, _), child_failure = await settle(
        _workload(ctx, md, previous) if serve else _withheld(ctx, md),
        ctx.ensure(build_leader_service(md) if multi_node else build_service(md)),
        _ensure_optional(ctx, r.PDB, md, build_pod_disruption_budget(md)),
        _ensure_optional(ctx, r.NETWORK_POLICY, md, build_model_deployment_network_policy(md, ctx.settings)),
        _autoscaler(ctx, md),
        _monitoring(ctx, md),
    )
    failure = failure or child_failure
    applied = workload is not None and workload.failure is None
    if workload is not None and workload.failure is not None:
        # the workload of the previous spec, if any, keeps serving meanwhile
        failure = failure or workload.failure
    if serve and applied:
        # the current spec's pods are applied: earlier fills (or the whole cache) can go
        (_,), sweep_failure = await settle(sweep_cache(ctx, md))
        failure = failure or sweep_failure
    if workload is None or not applied:  # not applied this time: report on our own, if any
        workload = AppliedWorkload(
            deployment=_ours(ctx, md, r.DEPLOYMENT, name),
            leaderworkerset=_ours(ctx, md, r.LEADER_WORKER_SET, leaderworkerset_name(md)),
            canary=_ours(ctx, md, r.DEPLOYMENT, canary_name(md)),
            rollout=previous.rollout if previous else None,
        )

    (route_result,), route_failure = await settle(_route(ctx, md, workload.rollout))
    summary, missing_gateway_api = route_result or (None, None)
    failure = failure or route_failure or missing_gateway_api
    if route_result is not None and workload.rollout is not None:  # None clears an earlier route's summary
        workload = replace(workload, rollout=workload.rollout.model_copy(update={"route": summary}))
    missing_api = failure in (LWS_NOT_INSTALLED, GATEWAY_API_NOT_INSTALLED)

    pods = ctx.cache.owned(r.POD.kind, "modeldeployment", ns, name)
    # a group's workers run no Triton: only leaders are asked for their models
    servers = [p for p in pods if (p["metadata"].get("labels") or {}).get(WORKER_INDEX_LABEL) == LEADER_INDEX]
    states, probe_error = _probe_models(ctx, md, key, servers if multi_node else pods)
    observed = Observed(
        deployment=workload.deployment,
        leaderworkerset=workload.leaderworkerset,
        pods=pods,
        endpoints=endpoints(md, ctx.settings),
        autoscaler=autoscaler,
        model_states=states,
        model_probe_error=probe_error,
        failure=failure,
        cache=cache,
        rollout_deferred=workload.deferred,
        canary=workload.canary,
        rollout=workload.rollout,
    )
    now = ctx.now()
    status, transitions = compute_status(
        md, observed, previous, now, ctx.settings.stall_seconds, ctx.settings.metric_absent_seconds
    )
    earlier = previous.trained_model if previous else None
    status.trained_model = trained_model(md, earlier, workload.rollout) if serve and applied else earlier
    await write_status(ctx, r.MODEL_DEPLOYMENT, body, status.wire())
    ctx.metrics.set_replicas(ns, name, status.desired_replicas or 0, status.ready_replicas or 0)
    for type_, reason, message in workload.events:
        ctx.announce(body, type_, reason, message)
    for transition in transitions:
        ctx.announce(body, transition.type, transition.reason, transition.message)
    if failure is not None and not missing_api and not failure.waiting:
        raise Surfaced(f"{failure.reason}: {failure.message}", reason=failure.reason)
    requeue = [stall_check_in(status, now, ctx.settings.stall_seconds)]
    if failure is not None and failure.waiting:
        requeue.append(PREDECESSOR_RECHECK_SECONDS)
    if missing_api:
        # like a missing KEDA: LWS or the Gateway API installed later sends no event here, so look
        # again (no backoff)
        requeue.append(MISSING_API_SECONDS)
    if cache is not None and not cache.filled and not job_finished(cache.job):
        requeue.append(FILL_POLL_SECONDS)  # what holds the fill up sends no event we watch
    if cache is not None and cache.retry_at is not None:
        requeue.append(max((cache.retry_at - now).total_seconds(), 0.0))  # time sends no event
    scaling = get_condition(status.conditions, "AutoscalingReady")
    if scaling is not None and scaling.status != ConditionStatus.TRUE:
        # an API installed later, or a metric absent long enough, sends no watch event: look again
        requeue.append(MISSING_API_SECONDS)
    if workload.deferred is not None:
        requeue.append(DEFERRED_RECHECK_SECONDS)  # a slot freed elsewhere sends no event here
    requeue.append(workload.requeue)  # a canary step's pause and analysis interval end with no event
    if ctx.settings.model_probe and states is not None:
        requeue.append(MODEL_PROBE_SECONDS)  # Triton's model state sends no watch events: look again soon
    return min((s for s in requeue if s is not None), default=None)
