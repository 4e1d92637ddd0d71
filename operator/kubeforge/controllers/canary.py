"""Canary rollouts (spec.rollout.canary): a changed pod template runs as a canary revision beside the
stable one, step by step, with live analysis, then is promoted or rolled back.

Two Deployments, one Service. The stable Deployment (`<name>`) keeps the pod template it runs; the
canary Deployment (`<name>-canary`) runs the current spec's. Both sets of pods carry the Service's
selector labels, so the Service (kube-proxy) balances requests over the ready pods of both: the
canary's share of the traffic is its share of the ready replicas, ceil(weight x replicas / 100)
of them, so the weight is only as fine as one replica in `replicas` (with 4, 25 % steps). The
stable keeps the rest, and always at least one pod: Ready stays true on it throughout. The HPA or
KEDA scales the whole (`spec.replicas`, through /scale); each step splits that number.

With `gateway`, the requests that come through that Gateway are split exactly: an HTTPRoute
(builders/gateway.py) weights the Services `<name>-stable` and `<name>-canary` with the step's
weight once the step's canary pods are ready (`status.rollout.routedWeight`); the replicas are
split as above all the same, so each side has the capacity for its share. The stable pods then
carry `kubeforge.io/revision=stable`; naming (or no longer naming) a Gateway changes only that
label, which rolls the stable in a plain rolling update rather than as a canary. A canary that
ends drains first (`ended`): the route sends it nothing, and its pods go only after
`gateway.drainSeconds`.

A step starts when the canary's pods for its weight are all ready; it holds `pauseSeconds`, and
with `analysis` also until an analysis in it passed. An analysis runs every `intervalSeconds` of
the step on the last interval's metrics (controllers/analysis.py): a failed one rolls back at
once, an inconclusive one (too few requests) holds the step. Prometheus finds a ready pod seconds
later and needs two scrapes of it for a rate, so a step's first analysis that finds no samples of
the canary yet is not recorded: it asks again every `SAMPLES_WAIT_SECONDS`, for up to one more
interval (then it is recorded inconclusive, as any other). The last step passed promotes: the
canary is deleted and the stable Deployment takes the current template (a rolling update of its
own, never waiting for the GPUs the canary held). A rollback deletes the canary and scales the
stable back; the spec stays unserved, and is not tried again, until the next edit or the retry
verb.

Verbs, as annotations on the ModelDeployment (the operator acts once, records it in status and an
Event, and removes the annotation):
- `kubeforge.io/rollout-action=promote`: promote now, whatever the step;
- `kubeforge.io/rollout-action=abort`: roll back now;
- `kubeforge.io/rollout-action=retry`: try a rolled-back revision again from step 1;
- `kubeforge.io/rollout-paused=true` (kept until removed): hold the current step; no analysis runs.

Everything the rollout must remember is in status (`status.rollout`: the revisions, the step, when
it started, the analyses), so a restarted operator continues the step it was in, with its clock.
An edit while a canary runs replaces the canary and starts again from step 1; an edit back to the
stable's template ends the canary. A pod template the operator itself renders differently (a new
release) is not a canary: it takes the operator rollout path (controllers/rollout.py). Removing
`rollout.canary` mid-way settles on the current spec: the stable Deployment takes its template.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from kubeforge.api.modeldeployment import (
    AnalysisResult,
    AnalysisVerdict,
    ModelDeployment,
    RolloutPhase,
    RolloutStatus,
    gateway_of,
)
from kubeforge.builders.modeldeployment import (
    CANARY,
    CANARY_REVISION_ANNOTATION,
    REVISION_LABEL,
    STABLE,
    build_canary_deployment,
    streams,
)
from kubeforge.controllers.analysis import Query, analyse
from kubeforge.controllers.proposals import recorded_proposal
from kubeforge.controllers.rollout import (
    WORKLOAD_TEMPLATE_ANNOTATION,
    applied_generation,
    serving,
    template_unchanged,
    workload_template_hash,
)
from kubeforge.settings import Settings
from kubeforge.status.workload import deployment_workload

Object = dict[str, Any]

ACTION_ANNOTATION = "kubeforge.io/rollout-action"
PAUSED_ANNOTATION = "kubeforge.io/rollout-paused"
ACTIONS = ("promote", "abort", "retry")
KEPT_ANALYSES = 10
# while the canary's pods start, look again this often (their readiness also sends events)
POD_WAIT_SECONDS = 10.0
# while Prometheus has no samples of a step's new canary pods yet, ask again this often
SAMPLES_WAIT_SECONDS = 2.0


def split(total: int, weight: int) -> tuple[int, int]:
    """(canary, stable) replicas for a weight: the canary ceil(weight% of total) and at least 1, the
    stable the rest and at least 1 (with one replica the canary is an extra pod)."""
    if total <= 0:
        return 0, 0
    canary = max(1, math.ceil(total * weight / 100))
    return canary, max(1, total - canary)


@dataclass
class Plan:
    """What the reconcile applies for the serving workload, and what status and Events say."""

    # the stable Deployment: apply this desired object, or (None) keep its template at `stable_replicas`
    stable: Object | None
    stable_replicas: int
    # the canary Deployment to apply, or None: there is none
    canary: Object | None
    status: RolloutStatus
    events: list[tuple[str, str, str]] = field(default_factory=list)
    requeue: float | None = None
    # the verb annotation acted on (or stale): removed by the reconcile
    acted: str | None = None


def complete(revision: str | None) -> RolloutStatus:
    """status.rollout while one revision serves the spec."""
    return RolloutStatus(
        phase=RolloutPhase.COMPLETE,
        summary="stable",
        message=f"revision {revision} serves the spec",
        stable_revision=revision,
    )


def settled(
    md: ModelDeployment, previous: RolloutStatus | None, revision: str
) -> tuple[RolloutStatus | None, list[tuple[str, str, str]]]:
    """status.rollout and Events when the stable takes the spec's template (no canary path)."""
    configured = md.spec.rollout is not None and md.spec.rollout.canary is not None
    events = []
    if previous is not None and previous.running:
        why = (
            f"the spec's template is the stable's ({revision}) again"
            if configured
            else "rollout.canary was removed: the stable Deployment takes the spec's template"
        )
        events.append(("Normal", "CanaryCancelled", f"canary {previous.canary_revision} ended: {why}"))
    if not configured:
        return None, events
    if (
        previous is not None
        and previous.phase == RolloutPhase.COMPLETE
        and previous.stable_revision == revision
    ):
        return previous, events
    return complete(revision), events


def ended(
    md: ModelDeployment,
    previous: RolloutStatus | None,
    rollout: RolloutStatus | None,
    live_canary: Object | None,
    now: datetime,
) -> RolloutStatus | None:
    """status.rollout once a running canary ended (promoted, rolled back, cancelled) with its Deployment
    still there: with a Gateway, none of its requests routed and its pods kept for the drain (the
    gateway follows the route some seconds later); otherwise `rollout` as it is."""
    gateway = gateway_of(md)
    ending = previous is not None and previous.running and rollout is not None and not rollout.running
    if not ending or live_canary is None or gateway is None or gateway.drain_seconds == 0:
        return rollout
    assert rollout is not None
    until = now + timedelta(seconds=gateway.drain_seconds)
    return rollout.model_copy(update={"routed_weight": 0, "canary_drain_until": until})


def drain_left(rollout: RolloutStatus | None, now: datetime) -> float | None:
    """Seconds an ended canary's pods still drain, or None: they may go."""
    if rollout is None or rollout.canary_drain_until is None or now >= rollout.canary_drain_until:
        return None
    return (rollout.canary_drain_until - now).total_seconds()


def drained(rollout: RolloutStatus | None) -> RolloutStatus | None:
    """The status once an ended canary's pods are gone: the route back on the one Service."""
    if rollout is None or rollout.canary_drain_until is None:
        return rollout
    return rollout.model_copy(update={"routed_weight": None, "canary_drain_until": None})


def wanted(
    md: ModelDeployment,
    desired: Object,
    live: Object | None,
    previous: RolloutStatus | None,
    observed_generation: int | None,
) -> bool:
    """Whether this reconcile takes the canary path: a canary is configured, the serving stable runs a
    template other than the spec's, and the change is the user's (a new generation), not the operator's."""
    canary = md.spec.rollout.canary if md.spec.rollout else None
    if canary is None or live is None or template_unchanged(desired, live) or not serving(live):
        return False
    if routing_label_only(desired, live):
        return False
    if previous is not None and previous.phase != RolloutPhase.COMPLETE:
        return True
    return applied_generation(live, observed_generation) != md.metadata.generation


def routing_label_only(desired: Object, live: Object) -> bool:
    """Whether the stable runs the spec's template but for the label `kubeforge.io/revision=stable` that
    naming a Gateway adds (and no longer naming one removes): a rolling update of the stable, not a
    canary of identical pods."""
    recorded = (live["metadata"].get("annotations") or {}).get(WORKLOAD_TEMPLATE_ANNOTATION)
    flipped = copy.deepcopy(desired)
    labels = flipped["spec"]["template"]["metadata"]["labels"]
    if labels.pop(REVISION_LABEL, None) is None:
        labels[REVISION_LABEL] = STABLE
    return recorded is not None and recorded == workload_template_hash(flipped)


def _ready(live_canary: Object | None, revision: str, replicas: int) -> bool:
    """Whether the canary Deployment runs `revision` with all `replicas` updated and ready."""
    if live_canary is None:
        return False
    if (live_canary["metadata"].get("annotations") or {}).get(CANARY_REVISION_ANNOTATION) != revision:
        return False
    return deployment_workload(live_canary, replicas).rolled_out


def revision_pods(pods: list[Object], revision: str) -> tuple[list[str], list[str]]:
    """The names of the running pods of the stable revision and of this canary revision."""
    stable, canary = [], []
    for pod in pods:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running":
            continue
        labels = meta.get("labels") or {}
        if labels.get(REVISION_LABEL) != CANARY:  # unlabelled, or `stable` with a Gateway
            stable.append(meta["name"])
        elif labels.get(CANARY_REVISION_ANNOTATION) == revision:
            canary.append(meta["name"])
    return sorted(stable), sorted(canary)


def canary_pods(pods: list[Object]) -> list[str]:
    """The names of the pods of any canary revision still there, terminating ones included."""
    return [
        p["metadata"]["name"]
        for p in pods
        if (p["metadata"].get("labels") or {}).get(REVISION_LABEL) == CANARY
    ]


def _unsampled(result: AnalysisResult) -> bool:
    """The canary's pods run but Prometheus has no rate of their requests yet (under two samples)."""
    requests = next((m for m in result.metrics if m.name == "requests"), None)
    return requests is not None and requests.canary is None


def _analysis_event(result: AnalysisResult) -> tuple[str, str, str]:
    kind = "Warning" if result.verdict == AnalysisVerdict.FAILED else "Normal"
    return kind, f"Analysis{result.verdict.value}", f"step {result.step}: {result.message}"


def _promote(
    desired: Object,
    current: RolloutStatus,
    revision: str,
    why: str,
    events: list[tuple[str, str, str]],
    total: int,
) -> Plan:
    events.append(("Normal", "Promoted", f"revision {revision} promoted to stable: {why}"))
    status = complete(revision).model_copy(
        update={
            "message": f"revision {revision} serves the spec: promoted, {why}",
            "analyses": current.analyses,
        }
    )
    return Plan(stable=desired, stable_replicas=total, canary=None, status=status, events=events)


def _rollback(
    current: RolloutStatus, revision: str, why: str, events: list[tuple[str, str, str]], total: int
) -> Plan:
    events.append(("Warning", "RolledBack", f"revision {revision} rolled back: {why}"))
    status = RolloutStatus(
        phase=RolloutPhase.ROLLED_BACK,
        summary="rolled back",
        message=f"revision {revision} rolled back ({why}); {current.stable_revision} serves. Edit the spec, or "
        f"annotate {ACTION_ANNOTATION}=retry to try it again",
        stable_revision=current.stable_revision,
        stable_replicas=total,
        canary_replicas=0,
        analyses=current.analyses,
        proposal=current.proposal,
        rolled_back_revision=revision,
    )
    return Plan(stable=None, stable_replicas=total, canary=None, status=status, events=events)


async def plan(
    md: ModelDeployment,
    settings: Settings,
    desired: Object,
    live: Object,
    live_canary: Object | None,
    previous: RolloutStatus | None,
    pods: list[Object],
    query: Query,
    now: datetime,
) -> Plan:
    """The next move of a canary rollout (when `wanted`); see `ended` for a canary that ends in it."""
    spec = md.spec.rollout.canary if md.spec.rollout else None
    assert spec is not None
    annotations = md.metadata.annotations or {}
    raw_action = annotations.get(ACTION_ANNOTATION)
    action = raw_action if raw_action in ACTIONS else None
    paused = annotations.get(PAUSED_ANNOTATION) == "true"
    total = md.spec.replicas
    revision = workload_template_hash(desired)
    stable_revision = (live["metadata"].get("annotations") or {}).get(WORKLOAD_TEMPLATE_ANNOTATION)
    events: list[tuple[str, str, str]] = []
    if raw_action is not None and action is None:
        allowed = ", ".join(ACTIONS)
        why = f"{ACTION_ANNOTATION}={raw_action} ignored: the verbs are {allowed}"
        events.append(("Warning", "RolloutActionIgnored", why))

    if (
        previous is not None
        and previous.phase == RolloutPhase.ROLLED_BACK
        and previous.rolled_back_revision == revision
    ):
        if action != "retry":
            held = previous.model_copy(update={"stable_replicas": total})
            return Plan(
                stable=None, stable_replicas=total, canary=None, status=held, events=events, acted=raw_action
            )
        events.append(("Normal", "CanaryRetried", f"revision {revision} is tried again from step 1"))
        previous = None

    running = previous if previous is not None and previous.running else None
    current = running if running is not None and running.canary_revision == revision else None
    if current is None:
        if running is not None:
            events.append(
                (
                    "Normal",
                    "CanaryReplaced",
                    f"canary {running.canary_revision} replaced by {revision}: from step 1",
                )
            )
        events.append(
            ("Normal", "CanaryStarted", f"revision {revision} rolls out as a canary beside {stable_revision}")
        )
        current = RolloutStatus(
            phase=RolloutPhase.PROGRESSING,
            summary="",
            message="",
            stable_revision=stable_revision,
            canary_revision=revision,
            step=1,
            steps=len(spec.steps),
            proposal=recorded_proposal(md),
        )

    if action == "abort":
        aborted = _rollback(current, revision, f"aborted by {ACTION_ANNOTATION}=abort", events, total)
        aborted.acted = raw_action
        return aborted
    if action == "promote":
        promoted = _promote(desired, current, revision, f"by {ACTION_ANNOTATION}=promote", events, total)
        promoted.acted = raw_action
        return promoted

    step = current.step or 1
    started = current.step_started_at
    analyses = list(current.analyses or [])
    canary_replicas, stable_replicas = split(total, spec.steps[step - 1].weight)
    if started is None and _ready(live_canary, revision, canary_replicas):
        started = now
    requeue: float | None = None
    note = ""
    waiting = False
    if started is not None and not paused:
        step_analyses = [a for a in analyses if a.step == step and a.revision == revision]
        if spec.analysis is not None:
            interval = spec.analysis.interval_seconds
            due = (step_analyses[-1].at if step_analyses else started) + timedelta(seconds=interval)
            if now >= due:
                stable_pods, canary_pods = revision_pods(pods, revision)
                result = await analyse(
                    query,
                    spec.analysis,
                    md.metadata.namespace or "",
                    stable_pods,
                    canary_pods,
                    step=step,
                    revision=revision,
                    window=interval,
                    now=now,
                    streaming=any(streams(m) for m in md.spec.models),
                )
                if (
                    _unsampled(result)
                    and not step_analyses
                    and now < started + timedelta(seconds=2 * interval)
                ):
                    due, waiting = now + timedelta(seconds=SAMPLES_WAIT_SECONDS), True
                else:
                    analyses = [*analyses, result][-KEPT_ANALYSES:]
                    step_analyses.append(result)
                    events.append(_analysis_event(result))
                    if result.verdict == AnalysisVerdict.FAILED:
                        failed = current.model_copy(update={"analyses": analyses})
                        why = f"the analysis of step {step} failed: {result.message}"
                        return _rollback(failed, revision, why, events, total)
                    due = now + timedelta(seconds=interval)
            requeue = (due - now).total_seconds()
        passed = spec.analysis is None or any(a.verdict == AnalysisVerdict.PASSED for a in step_analyses)
        pause = spec.steps[step - 1].pause_seconds
        ends = started + timedelta(seconds=pause) if pause is not None else None
        if ends is None:
            note = f", held until promoted ({ACTION_ANNOTATION}=promote)"
        elif now >= ends and passed:
            if step == len(spec.steps):
                done = current.model_copy(update={"analyses": analyses})
                return _promote(desired, done, revision, f"all {step} steps passed", events, total)
            events.append(
                ("Normal", "CanaryStepPassed", f"step {step}/{len(spec.steps)} of {revision} passed")
            )
            step, started = step + 1, None
            canary_replicas, stable_replicas = split(total, spec.steps[step - 1].weight)
        elif now < ends:
            left = (ends - now).total_seconds()
            note = f", {math.ceil(left)}s of its {pause}s pause left"
            requeue = left if requeue is None else min(requeue, left)
        else:
            note = ", waiting for an analysis to pass"
        if waiting:
            note += ", its first analysis waiting for the canary's samples in Prometheus"
    if started is None:
        note, requeue = ", waiting for its pods to be ready", POD_WAIT_SECONDS
    elif paused:
        note = f", paused ({PAUSED_ANNOTATION}=true)"
    weight = spec.steps[step - 1].weight
    # a Gateway sends the step's weight once its pods are ready: until then the previous step's
    routed = weight if started is not None else (spec.steps[step - 2].weight if step > 1 else 0)
    status = current.model_copy(
        update={
            "phase": RolloutPhase.PAUSED if paused else RolloutPhase.PROGRESSING,
            "summary": f"step {step}/{len(spec.steps)} {weight}%",
            "message": f"step {step}/{len(spec.steps)}: canary {revision} at {weight}% ({canary_replicas} of "
            f"{canary_replicas + stable_replicas} replicas){note}",
            "step": step,
            "weight": weight,
            "canary_replicas": canary_replicas,
            "stable_replicas": stable_replicas,
            "routed_weight": routed if spec.gateway is not None else None,
            "step_started_at": started,
            "analyses": analyses or None,
        }
    )
    canary = build_canary_deployment(md, settings, canary_replicas, revision)
    return Plan(
        stable=None,
        stable_replicas=stable_replicas,
        canary=canary,
        status=status,
        events=events,
        requeue=requeue,
        acted=raw_action,
    )
