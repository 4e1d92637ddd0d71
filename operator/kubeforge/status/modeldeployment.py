"""Fold a ModelDeployment's observed children into its status (pure: no I/O, time passed in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubeforge.api.common import Condition, ConditionStatus
from kubeforge.api.modeldeployment import (
    CacheState,
    ColdStart,
    Endpoints,
    ModelDeployment,
    ModelDeploymentStatus,
    ModelState,
    Phase,
    RolloutPhase,
    RolloutStatus,
)
from kubeforge.builders.leaderworkerset import leader_selector_string
from kubeforge.builders.modeldeployment import selector_string
from kubeforge.builders.pods import gpu_summary
from kubeforge.status.cache import CacheObservation, cache_status, fill_problem
from kubeforge.status.conditions import get_condition, parse_time, set_condition
from kubeforge.status.gitops import ReconcileFailure, Verdict, kstatus_conditions
from kubeforge.status.pods import PodProblem, pod_problem, pod_ready
from kubeforge.status.workload import deployment_workload, leaderworkerset_workload

# Degraded this long (an unschedulable GPU request, an image that cannot be pulled, a crash loop)
# means the deployment cannot progress without a change: Stalled, which GitOps tools call Failed.
DEFAULT_STALL_SECONDS = 300.0
# an HPA that cannot read its metric this long: the metric is not coming (no scrape, no adapter rule)
DEFAULT_METRIC_ABSENT_SECONDS = 300.0
# the HPA's words for "the metrics API answered, but not with this metric"
METRIC_FAILURES = ("FailedGetPodsMetric", "FailedGetResourceMetric", "FailedGetExternalMetric")


@dataclass(frozen=True)
class AutoscalerObservation:
    """The autoscaler child as observed: an HPA or ScaledObject, or why there is none."""

    engine: str  # "hpa" or "keda"
    obj: dict[str, Any] | None = None
    missing_reason: str | None = None  # e.g. KedaNotInstalled
    missing_message: str = ""


@dataclass(frozen=True)
class Observed:
    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]]
    endpoints: dict[str, str | list[str]]
    autoscaler: AutoscalerObservation | None = None
    # per-model state from Triton's repository index; None when no ready pod could be asked
    model_states: list[ModelState] | None = None
    model_probe_error: str | None = None
    warnings: list[str] = field(default_factory=list)
    # a child could not be applied (name clash, denial, invalid): the spec is not realised
    failure: ReconcileFailure | None = None
    # the model cache of the spec's models (spec.cache); None without one
    cache: CacheObservation | None = None
    # a replica spanning several nodes runs as a LeaderWorkerSet group instead of a Deployment
    leaderworkerset: dict[str, Any] | None = None
    # the workload keeps its pod template: it waits for an operator rollout slot (why, in words)
    rollout_deferred: str | None = None
    # the canary revision's Deployment and the canary rollout's status (spec.rollout.canary)
    canary: dict[str, Any] | None = None
    rollout: RolloutStatus | None = None


@dataclass(frozen=True)
class Transition:
    """A condition change worth an Event."""

    type: str  # Normal or Warning
    reason: str
    message: str


def _first_problem(pods: list[dict[str, Any]]) -> PodProblem | None:
    for pod in pods:
        problem = pod_problem(pod)
        if problem:
            return problem
    return None


def _autoscaling_condition(
    obs: AutoscalerObservation, now: datetime, absent_seconds: float
) -> tuple[bool | None, str, str, int | None]:
    """(status, reason, message, desired replicas) of AutoscalingReady, mirroring the autoscaler's own."""
    if obs.missing_reason:
        return False, obs.missing_reason, obs.missing_message, None
    if obs.obj is None:
        return None, "Creating", f"the {obs.engine} autoscaler is being created", None
    status = obs.obj.get("status") or {}
    conds = {c.get("type"): c for c in status.get("conditions") or []}
    # an HPA that has not computed yet reports 0: only trust its figure once it can scale
    desired = status.get("desiredReplicas") if conds.get("AbleToScale", {}).get("status") == "True" else None
    if obs.engine == "hpa":
        for type_ in ("AbleToScale", "ScalingActive"):
            c = conds.get(type_)
            if c is None:
                return None, "Pending", "the HorizontalPodAutoscaler has not reported yet", desired
            if c.get("status") != "True":
                since = parse_time(c.get("lastTransitionTime"))
                absent_for = (now - since).total_seconds() if since else 0.0
                if c.get("reason") in METRIC_FAILURES and absent_for >= absent_seconds:
                    message = (
                        f"no value of the target metric for {int(absent_for)}s (bound {int(absent_seconds)}s): "
                        "is Prometheus scraping the Triton pods, and does the adapter have the rules of "
                        f"charts/prometheus-adapter-rules.yaml? The HPA says: {c.get('message', '')}"
                    )
                    return False, "MetricAbsent", message, desired
                return False, str(c.get("reason", type_)), f"{type_}: {c.get('message', '')}", desired
        return True, "ScalingActive", str(conds["ScalingActive"].get("message", "")), desired
    ready = conds.get("Ready")
    if ready is None:
        return None, "Pending", "the ScaledObject has not reported yet", desired
    ok = ready.get("status") == "True"
    return (
        ok,
        str(ready.get("reason") or ("ScaledObjectReady" if ok else "ScaledObjectNotReady")),
        str(ready.get("message", "")),
        desired,
    )


def stall_check_in(status: ModelDeploymentStatus, now: datetime, stall_seconds: float) -> float | None:
    """Seconds until a Degraded deployment counts as Stalled (None: not degraded, or already stalled)."""
    degraded = get_condition(status.conditions, "Degraded")
    stalled = get_condition(status.conditions, "Stalled")
    if degraded is None or degraded.status != ConditionStatus.TRUE or degraded.last_transition_time is None:
        return None
    if stalled is not None and stalled.status == ConditionStatus.TRUE:
        return None
    return max(0.5, stall_seconds - (now - degraded.last_transition_time).total_seconds())


def _cold_start(
    previous: ModelDeploymentStatus | None, desired: int, ready_replicas: int, now: datetime
) -> ColdStart | None:
    """Start timing when the replicas leave zero; stop at the first ready server."""
    last = previous.cold_start if previous else None
    was_zero = previous is not None and previous.phase == Phase.SCALED_TO_ZERO
    if was_zero and desired > 0:
        last = ColdStart(activated_at=now)
    if last is not None and last.ready_at is None and ready_replicas >= 1:
        last = last.model_copy(update={"ready_at": now, "seconds": (now - last.activated_at).total_seconds()})
    return last


def compute_status(
    md: ModelDeployment,
    observed: Observed,
    previous: ModelDeploymentStatus | None,
    now: datetime,
    stall_seconds: float = DEFAULT_STALL_SECONDS,
    metric_absent_seconds: float = DEFAULT_METRIC_ABSENT_SECONDS,
) -> tuple[ModelDeploymentStatus, list[Transition]]:
    """The status a person and `kubectl wait` can trust, and the transitions to announce."""
    generation = md.metadata.generation
    conditions: list[Condition] = list(previous.conditions or []) if previous else []
    desired = md.spec.replicas
    multi_node = md.spec.replica_nodes > 1
    rollout = observed.rollout
    # while a canary runs, the stable Deployment keeps its template at its share of the replicas
    running = rollout if rollout is not None and rollout.running else None
    stable_desired = running.stable_replicas if running is not None else None
    workload = (
        leaderworkerset_workload(observed.leaderworkerset, observed.pods, desired)
        if multi_node
        else deployment_workload(observed.deployment, desired if stable_desired is None else stable_desired)
    )
    replicas, ready_replicas, updated = workload.replicas, workload.ready, workload.updated
    rolled_out = workload.rolled_out
    if running is not None and stable_desired is not None:
        canary = deployment_workload(observed.canary, running.canary_replicas or 0)
        replicas, ready_replicas = replicas + canary.replicas, ready_replicas + canary.ready
        # Ready stays on the stable revision: its share ready, even while a step scales it down
        rolled_out = workload.ready >= max(stable_desired, 1)
    servers = "groups" if multi_node else "Triton servers"
    live_pods = [p for p in observed.pods if not p["metadata"].get("deletionTimestamp")]
    ready_pods = sum(1 for p in live_pods if pod_ready(p))

    def put(type_: str, status: bool | None, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(conditions, type_, status, reason, message, generation, now)

    # the model cache: the pods of the current spec start only once its fill is complete
    cache = cache_status(observed.cache, previous.cache if previous else None) if observed.cache else None
    cache_failed = cache is not None and cache.state == CacheState.FAILED
    cache_waiting = cache is not None and cache.state in (CacheState.PENDING, CacheState.FILLING)
    cache_message = ""
    if cache is not None and cache_waiting:
        serving = " (the pods serve the previous models meanwhile)" if workload.exists else ""
        cache_message = f"filling the model cache {cache.key}: {cache.message}{serving}"

    # Degraded: pods stuck for a reason a person must act on
    problem = _first_problem(live_pods)
    held_up = fill_problem(observed.cache) if observed.cache is not None else None
    if rollout is not None and rollout.phase == RolloutPhase.ROLLED_BACK:
        put("Degraded", True, "RolledBack", rollout.message)
    elif cache is not None and cache_failed:
        put("Degraded", True, "CacheFillFailed", f"the model cache fill failed: {cache.message}")
    elif held_up is not None:
        put("Degraded", True, held_up.reason, f"the model cache fill's pod {held_up.pod}: {held_up.message}")
    elif workload.replica_failure is not None:
        put("Degraded", True, "FailedCreate", f"pods cannot be created: {workload.replica_failure}")
    elif problem:
        put("Degraded", True, problem.reason, f"pod {problem.pod}: {problem.message}")
    elif workload.deadline is not None:
        put("Degraded", True, "ProgressDeadlineExceeded", workload.deadline)
    else:
        put("Degraded", False, "AsExpected", "no pod is stuck")

    # Available means someone can be served: at least one ready replica. (The Deployment's own
    # Available only means "no more than maxUnavailable missing", which is true at 0 of 1 ready.)
    if not workload.exists and cache_waiting:
        put("Available", False, "CacheFilling", "no server starts before the model cache is filled")
    elif not workload.exists:
        put("Available", False, "Creating", f"{workload.name} has no status yet")
    elif desired == 0:
        put(
            "Available",
            False,
            "ScaledToZero",
            "no replica is wanted: requests find no server until the autoscaler scales up",
        )
    elif ready_replicas >= 1:
        put("Available", True, "ReplicasReady", f"{ready_replicas}/{desired} {servers} ready")
    else:
        put("Available", False, "NoReplicaReady", f"0/{desired} {servers} ready")

    if cache_waiting:
        put("Progressing", True, "CacheFilling", cache_message)
    elif running is not None:
        reason = "CanaryPaused" if running.phase == RolloutPhase.PAUSED else "CanaryProgressing"
        put("Progressing", True, reason, running.message)
    elif rollout is not None and rollout.phase == RolloutPhase.ROLLED_BACK:
        put("Progressing", False, "RolledBack", rollout.message)
    elif rolled_out:
        put(
            "Progressing",
            False,
            "RolloutComplete",
            f"{ready_replicas}/{desired} replicas ready and up to date",
        )
    elif not workload.exists:
        put("Progressing", True, "Creating", f"creating {workload.name}")
    elif workload.recreating is not None:
        put("Progressing", True, "GroupRecreating", workload.recreating)
    else:
        put(
            "Progressing",
            True,
            "RollingOut",
            f"{updated}/{desired} updated, {ready_replicas}/{desired} ready",
        )

    failure = observed.failure
    if failure:
        put("Ready", False, failure.reason, failure.message)
    elif cache is not None and cache_failed:
        put("Ready", False, "CacheFillFailed", f"the model cache fill failed: {cache.message}")
    elif cache_waiting:
        put("Ready", False, "CacheFilling", cache_message)
    elif desired == 0 and rolled_out:
        put("Ready", True, "ScaledToZero", "scaled to zero replicas")
    elif rolled_out:
        put(
            "Ready",
            True,
            "AllReplicasReady",
            f"{ready_replicas}/{desired} {servers} ready with all models loaded",
        )
    elif workload.recreating is not None:
        put("Ready", False, "GroupRecreating", workload.recreating)
    elif workload.replica_failure is not None:
        put("Ready", False, "FailedCreate", f"pods cannot be created: {workload.replica_failure}")
    elif problem:
        put("Ready", False, problem.reason, f"pod {problem.pod}: {problem.message}")
    else:
        put("Ready", False, "NotAllReplicasReady", f"{ready_replicas}/{desired} {servers} ready")

    models = observed.model_states
    if models is not None:
        not_ready = [m for m in models if m.state != "READY"]
        if not_ready:
            detail = "; ".join(
                f"{m.name}: {m.state}{' (' + m.reason + ')' if m.reason else ''}" for m in not_ready
            )
            put("ModelsReady", False, "ModelNotReady", detail)
        else:
            put("ModelsReady", True, "AllModelsReady", f"{len(models)} model(s) READY")
    elif ready_pods == 0:
        put("ModelsReady", None, "NoReadyServer", "no Triton server is ready to report its models")
    else:
        put(
            "ModelsReady",
            None,
            "Unreachable",
            observed.model_probe_error or "Triton's repository index was not read",
        )

    desired_replicas = desired
    if observed.autoscaler is not None:
        scaling, reason, message, hpa_desired = _autoscaling_condition(
            observed.autoscaler, now, metric_absent_seconds
        )
        put("AutoscalingReady", scaling, reason, message)
        if hpa_desired is not None:
            desired_replicas = int(hpa_desired)
    else:
        conditions = [c for c in conditions if c.type != "AutoscalingReady"]

    if observed.rollout_deferred is not None:
        put("RolloutDeferred", True, "WaitingForRolloutSlot", observed.rollout_deferred)
    else:
        conditions = [c for c in conditions if c.type != "RolloutDeferred"]

    conditions = _gitops(conditions, failure, stall_seconds, generation, now)
    degraded = get_condition(conditions, "Degraded")
    ready = get_condition(conditions, "Ready")
    if failure and failure.waiting:
        phase = Phase.PROGRESSING
    elif failure:
        phase = Phase.FAILED
    elif degraded and degraded.status == ConditionStatus.TRUE:
        phase = Phase.DEGRADED
    elif ready and ready.status == ConditionStatus.TRUE:
        phase = Phase.SCALED_TO_ZERO if desired == 0 else Phase.READY
    elif workload.exists or cache_waiting:
        phase = Phase.PROGRESSING
    else:
        phase = Phase.PENDING

    status = ModelDeploymentStatus(
        observed_generation=generation,
        phase=phase,
        replicas=replicas,
        desired_replicas=desired_replicas,
        ready_replicas=ready_replicas,
        ready=f"{ready_replicas}/{desired}",
        selector=leader_selector_string(md) if multi_node else selector_string(md),
        model=",".join(m.name for m in md.spec.models),
        gpu=gpu_summary(md.spec.gpu),
        endpoints=Endpoints.model_validate(observed.endpoints),
        models=models,
        cold_start=_cold_start(previous, desired, ready_replicas, now),
        cache=cache,
        rollout=rollout,
        conditions=sorted(conditions, key=lambda c: c.type),
    )
    transitions = _transitions(previous, status)
    before = previous.cache if previous else None
    if (
        cache is not None
        and cache.state == CacheState.READY
        and (before is None or before.key != cache.key or before.state != CacheState.READY)
    ):
        size = f"{cache.bytes} bytes, {cache.digest}" if cache.digest else "size and digest unknown"
        transitions.append(Transition("Normal", "CacheFilled", f"model cache {cache.key} is ready ({size})"))
    cold = status.cold_start
    if cold and cold.seconds is not None and (previous is None or previous.cold_start != cold):
        transitions.append(
            Transition(
                "Normal", "ColdStart", f"scaled up from zero: first server ready in {cold.seconds:.1f}s"
            )
        )
    return status, transitions


def _gitops(
    conditions: list[Condition],
    failure: ReconcileFailure | None,
    stall_seconds: float,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """Reconciling while creating or rolling out; Stalled on a failure or when Degraded for too long."""
    ready = get_condition(conditions, "Ready")
    progressing = get_condition(conditions, "Progressing")
    degraded = get_condition(conditions, "Degraded")
    assert ready is not None and progressing is not None and degraded is not None
    stalled = Verdict(False, "AsExpected", "nothing keeps the deployment from progressing")
    if failure and failure.waiting:
        pass
    elif failure:
        stalled = Verdict(True, failure.reason, failure.message)
    elif degraded.status == ConditionStatus.TRUE:
        since = degraded.last_transition_time
        seconds = (now - since).total_seconds() if since else 0.0
        if degraded.reason in ("CacheFillFailed", "RolledBack"):  # not retried by itself: stalled at once
            stalled = Verdict(True, degraded.reason, degraded.message)
        elif degraded.reason == "ProgressDeadlineExceeded" or seconds >= stall_seconds:
            bound = (
                "the Deployment's progress deadline"
                if degraded.reason == "ProgressDeadlineExceeded"
                else (f"longer than {int(stall_seconds)}s")
            )
            stalled = Verdict(True, degraded.reason, f"degraded {bound}: {degraded.message}")
    reconciling = Verdict(False, "AsExpected", "the deployment matches its spec")
    if failure and failure.waiting:
        reconciling = Verdict(True, failure.reason, failure.message)
    elif not stalled.status and progressing.status == ConditionStatus.TRUE:
        reconciling = Verdict(True, progressing.reason, progressing.message)
    ready_verdict = Verdict(ready.status == ConditionStatus.TRUE, ready.reason, ready.message)
    return kstatus_conditions(
        conditions,
        ready=ready_verdict,
        reconciling=reconciling,
        stalled=stalled,
        generation=generation,
        now=now,
    )


_ANNOUNCED: dict[str, tuple[str, str]] = {
    "Ready": ("Normal", "Warning"),
    "Degraded": ("Warning", "Normal"),
    "AutoscalingReady": ("Normal", "Warning"),
    "Stalled": ("Warning", "Normal"),
}


def _transitions(previous: ModelDeploymentStatus | None, current: ModelDeploymentStatus) -> list[Transition]:
    out: list[tuple[str, Transition]] = []
    for type_, (when_true, when_false) in _ANNOUNCED.items():
        now_c = get_condition(current.conditions, type_)
        before = get_condition(previous.conditions if previous else None, type_)
        if now_c is None or now_c.status == ConditionStatus.UNKNOWN:
            continue
        if before is None and now_c.status == ConditionStatus.FALSE and type_ != "AutoscalingReady":
            continue  # "not degraded" or "not ready yet" at creation is not news
        changed = before is None or before.status != now_c.status or before.reason != now_c.reason
        # each distinct reason to be stuck is news, even when the reason's name stays the same
        if type_ == "Stalled" and now_c.status == ConditionStatus.TRUE and before is not None:
            changed = changed or before.message != now_c.message
        if not changed:
            continue
        kind = when_true if now_c.status == ConditionStatus.TRUE else when_false
        if type_ == "Ready" and now_c.reason in ("NotAllReplicasReady", "Creating", "CacheFilling"):
            kind = "Normal"  # waiting for pods is not a problem yet; Degraded says when it is
        out.append((type_, Transition(kind, now_c.reason, now_c.message)))
    # a failure sets Ready=False and Stalled=True with one reason: the Stalled event says it once
    stalled = {t.reason for type_, t in out if type_ == "Stalled" and t.type == "Warning"}
    return [t for type_, t in out if type_ == "Stalled" or t.reason not in stalled]
