"""Pure pieces of TrainingJob reconciliation: failure classification, attempt observation, conditions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubeforge.api.common import Condition, ConditionStatus
from kubeforge.api.trainingjob import CheckpointInfo, Failure, FailurePolicy, TrainingPhase, ValidationInfo
from kubeforge.status.conditions import get_condition, parse_time, set_condition
from kubeforge.status.gitops import ReconcileFailure, Verdict, kstatus_conditions
from kubeforge.status.pods import pending_message

PREEMPTION_REASONS = {
    "Evicted",
    "Preempted",
    "PreemptionByScheduler",
    "NodeLost",
    "DeletionByTaintManager",
    "TerminationByKubelet",
}
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
MAX_BACKOFF_SECONDS = 600
SIGTERM_EXIT_CODE = 128 + 15


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated and terminated.get("exitCode", 0) != 0:
            return dict(terminated)
    for cs in pod.get("status", {}).get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            return dict(terminated)
    return None


def worker_index(pod: dict[str, Any]) -> int | None:
    value = (pod["metadata"].get("annotations") or {}).get(COMPLETION_INDEX)
    return int(value) if value is not None and value.isdigit() else None


def is_preemption(pod: dict[str, Any]) -> bool:
    """Evicted, preempted, or lost with its node: not the program's fault."""
    status = pod.get("status", {})
    if status.get("reason") in PREEMPTION_REASONS:
        return True
    for c in status.get("conditions") or []:
        if c.get("type") == "DisruptionTarget" and c.get("status") == "True":
            return True
    return False


def failed_at(pod: dict[str, Any]) -> datetime | None:
    """When a failed worker failed: its container's finish, else the pod's latest condition change."""
    finished = parse_time((_terminated(pod) or {}).get("finishedAt"))
    if finished is not None:
        return finished
    changes = [parse_time(c.get("lastTransitionTime")) for c in pod.get("status", {}).get("conditions") or []]
    return max((t for t in changes if t), default=None)


def stopped_by_others(pod: dict[str, Any]) -> bool:
    """A worker that was stopped rather than failed: being deleted (the Job controller removes the
    rest of a failed Job's pods), or ended by SIGTERM (exit code 143)."""
    terminated = _terminated(pod) or {}
    return bool(pod["metadata"].get("deletionTimestamp")) or terminated.get("exitCode") == SIGTERM_EXIT_CODE


def earliest_failure(pods: list[dict[str, Any]]) -> dict[str, Any]:
    """The worker that failed first: the cause, where the others often only followed it.

    Times have a resolution of a second, so the cause and the workers stopped because of it often
    tie: among those, a worker that failed by itself comes before one that was stopped.
    """
    far = datetime.max.replace(tzinfo=UTC)
    return min(
        pods,
        key=lambda p: (
            failed_at(p) or far,
            stopped_by_others(p),
            worker_index(p) or 0,
            p["metadata"]["name"],
        ),
    )


def classify_failure(pod: dict[str, Any], policy: FailurePolicy, now: datetime) -> Failure:
    """Why a worker failed, and whether the failure policy retries it."""
    name = pod["metadata"]["name"]
    index = worker_index(pod)
    if is_preemption(pod):
        reason = pod.get("status", {}).get("reason") or "Preempted"
        message = pod.get("status", {}).get("message") or "the worker was evicted or preempted"
        return Failure(worker=index, pod=name, reason=reason, message=message, retryable=True, time=now)
    terminated = _terminated(pod)
    if terminated is None and pod.get("status", {}).get("reason"):
        # the kubelet refused the pod before any container ran (UnexpectedAdmissionError,
        # OutOfnvidia.com/gpu, NodeAffinity...): the node's fault, never the program's
        reason = pod["status"]["reason"]
        message = (
            f"worker {index} ({name}) was rejected by its node: {pod['status'].get('message') or reason}"
        )
        return Failure(worker=index, pod=name, reason=reason, message=message, retryable=True, time=now)
    terminated = terminated or {}
    code = terminated.get("exitCode")
    reason = terminated.get("reason") or pod.get("status", {}).get("reason") or "Error"
    retryable = code is not None and policy.is_retryable(int(code))
    kind = "retryable" if retryable else "permanent"
    message = f"worker {index} ({name}) exited with code {code}: {kind} under the failure policy"
    if terminated.get("message"):
        message += f"; {str(terminated['message'])[-300:]}"
    return Failure(
        worker=index, pod=name, exit_code=code, reason=reason, message=message, retryable=retryable, time=now
    )


@dataclass(frozen=True)
class AttemptObservation:
    """One attempt's Job and pods, folded."""

    suspended_by_queue: bool
    active: int
    running: int
    succeeded: int
    failed_pods: list[dict[str, Any]]
    complete: bool
    pending_message: str | None
    started: datetime | None  # when every worker was running
    # the Job's own verdict (Failed or FailureTarget), which outlives a failed pod that vanished
    job_failure: dict[str, Any] | None = None


def observe_attempt(job: dict[str, Any], pods: list[dict[str, Any]], workers: int) -> AttemptObservation:
    status = job.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    job_failure = next(
        (
            c
            for c in status.get("conditions") or []
            if c.get("type") in ("Failed", "FailureTarget") and c.get("status") == "True"
        ),
        None,
    )
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    running = [p for p in live if p.get("status", {}).get("phase") == "Running"]
    failed = [p for p in pods if p.get("status", {}).get("phase") == "Failed"]
    succeeded = sum(1 for p in pods if p.get("status", {}).get("phase") == "Succeeded")
    starts = [parse_time(p.get("status", {}).get("startTime")) for p in running]
    started = max((s for s in starts if s), default=None) if len(running) >= workers else None
    return AttemptObservation(
        suspended_by_queue=bool(job.get("spec", {}).get("suspend")),
        active=int(status.get("active", 0) or 0),
        running=len(running),
        succeeded=max(succeeded, int(status.get("succeeded", 0) or 0)),
        failed_pods=failed,
        complete=conditions.get("Complete") == "True" or conditions.get("SuccessCriteriaMet") == "True",
        pending_message=pending_message(live),
        started=started,
        job_failure=job_failure,
    )


def job_failure(job: dict[str, Any], condition: dict[str, Any], now: datetime) -> Failure:
    """A failed attempt whose failed worker is no longer there to read (deleted or evicted and gone)."""
    name = job["metadata"]["name"]
    detail = condition.get("message") or condition.get("reason") or "the Job failed"
    return Failure(
        reason=str(condition.get("reason") or "JobFailed"),
        message=f"Job {name} failed ({detail}); the failed worker's pod was gone before it could be read",
        retryable=True,
        time=now,
    )


def backoff_seconds(policy: FailurePolicy, restarts: int) -> int:
    """Exponential backoff between attempts: backoffSeconds * 2^(restarts-1), capped at 10 minutes."""
    return int(min(MAX_BACKOFF_SECONDS, policy.backoff_seconds * (2 ** max(0, restarts - 1))))


def gpu_seconds(pods: list[dict[str, Any]], gpus_per_worker: int, now: datetime) -> float:
    """GPU-seconds the pods held: from each worker's start to its end (or now)."""
    total = 0.0
    for pod in pods:
        start = parse_time(pod.get("status", {}).get("startTime"))
        if start is None:
            continue
        end = now
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            finished = parse_time(((cs.get("state") or {}).get("terminated") or {}).get("finishedAt"))
            if finished:
                end = finished
        total += max(0.0, (end - start).total_seconds()) * gpus_per_worker
    return total


PHASE_CONDITIONS = ("Running", "Restarting", "Succeeded", "Failed", "Suspended")


def phase_conditions(
    conditions: list[Condition],
    phase: TrainingPhase,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """Set the condition of `phase` True and the other phase conditions False (Created stays True)."""
    out = set_condition(
        conditions, "Created", True, "WorkersCreated", "the TrainingJob was accepted", generation, now
    )
    for type_ in PHASE_CONDITIONS:
        active = type_ == phase.value
        if active:
            out = set_condition(out, type_, True, reason, message, generation, now)
        elif any(c.type == type_ for c in out) or type_ in ("Succeeded", "Failed"):
            # the inactive conditions carry the current reason too: `Succeeded=False, reason=Queued`
            out = set_condition(out, type_, False, reason, message, generation, now)
    return sorted(out, key=lambda c: c.type)


Reported = TypeVar("Reported", CheckpointInfo, ValidationInfo)


def _newest_reported(pods: list[dict[str, Any]], key: str, model: type[Reported]) -> Reported | None:
    """The entry `key` of the progress document with the highest step among the workers' termination
    messages, if any.

    The reference trainer (kubeforge.trainer.progress) writes its progress document there on exit;
    a program that writes anything else, or nothing, simply reports nothing.
    """
    newest: Reported | None = None
    for pod in pods:
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            message = ((cs.get("state") or {}).get("terminated") or {}).get("message") or ""
            try:
                entry = json.loads(message).get(key)
                info = model.model_validate(entry) if entry else None
            except (ValueError, AttributeError):
                continue
            if info is not None and (newest is None or (info.step or 0) > (newest.step or 0)):
                newest = info
    return newest


def reported_checkpoint(pods: list[dict[str, Any]]) -> CheckpointInfo | None:
    """The newest checkpoint the trainer reported in a worker's termination message, if any."""
    return _newest_reported(pods, "checkpoint", CheckpointInfo)


def reported_validation(pods: list[dict[str, Any]]) -> ValidationInfo | None:
    """The newest validation (loss, perplexity) the trainer reported in a worker's termination message."""
    return _newest_reported(pods, "validation", ValidationInfo)


ACTIVE_PHASES = (TrainingPhase.PENDING, TrainingPhase.RUNNING, TrainingPhase.RESTARTING)


def gitops_conditions(
    conditions: list[Condition],
    phase: TrainingPhase,
    reason: str,
    message: str,
    failure: ReconcileFailure | None,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """Ready (Succeeded), Reconciling (Pending, Running, Restarting), Stalled (Failed, or a failure)."""
    if failure is not None:
        stalled = Verdict(True, failure.reason, failure.message)
    elif phase == TrainingPhase.FAILED:
        stalled = Verdict(True, reason, message)
    else:
        stalled = Verdict(False, "AsExpected", "nothing keeps the job from progressing")
    active = phase in ACTIVE_PHASES and not stalled.status
    reconciling = Verdict(active, reason if active else "AsExpected", message if active else f"phase {phase}")
    if failure is not None:
        ready = Verdict(False, failure.reason, failure.message)
    else:
        ready = Verdict(phase == TrainingPhase.SUCCEEDED, reason, message)
    return kstatus_conditions(
        conditions, ready=ready, reconciling=reconciling, stalled=stalled, generation=generation, now=now
    )


def phase_reason(conditions: list[Condition] | None, phase: TrainingPhase | None) -> tuple[str, str]:
    """The reason and message of the phase as last written (for a reconcile that did not change it)."""
    for type_ in (phase.value if phase else "", "Reconciling", "Stalled", "Created"):
        condition = get_condition(conditions, type_)
        if condition is not None and condition.status == ConditionStatus.TRUE:
            return condition.reason, condition.message
    return "Created", "the TrainingJob was accepted"
