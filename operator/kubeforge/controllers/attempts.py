"""What the cluster says about a TrainingJob's current attempt: whether its workers were
respecified, since when its pending deadline counts, why its workers cannot be created, whether
its namespace is going away. Each answer is derived from what exists; no decision is taken here
(controllers/trainingjob.py decides)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from kubeforge.api.trainingjob import TrainingJob, TrainingJobStatus
from kubeforge.builders.trainingjob import SPEC_HASH_ANNOTATION, build_worker_job, worker_spec_hash
from kubeforge.controllers.context import Context
from kubeforge.controllers.failures import abandoned
from kubeforge.k8s import resources as r
from kubeforge.k8s.client import ApiError
from kubeforge.k8s.semantic import applied_hash, stamped
from kubeforge.status.conditions import parse_time
from kubeforge.status.trainingjob import is_preemption

Object = dict[str, Any]
# workers missing this long after their Job was created: ask the Job's Events why (a quota...)
MISSING_WORKERS_GRACE_SECONDS = 2.0


def desired_job(tj: TrainingJob, attempt: int) -> Object:
    queue = tj.spec.scheduling.queue if tj.spec.scheduling else None
    return build_worker_job(tj, attempt, suspend=queue is not None)


def workers_respecified(tj: TrainingJob, status: TrainingJobStatus, job: Object) -> bool:
    """Whether the spec of the workers changed since the running attempt's Job was created."""
    recorded = (job["metadata"].get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
    if recorded is not None:
        return bool(recorded != worker_spec_hash(tj))
    # a Job of a release that did not record the spec: only an edit since that release last
    # reconciled (a newer generation) may restart it, when it changes the template
    if tj.metadata.generation == status.observed_generation:
        return False
    current = applied_hash(job)
    return current is not None and current != applied_hash(stamped(desired_job(tj, status.attempt or 0)))


def pending_since(tj: TrainingJob, status: TrainingJobStatus, job: Object) -> datetime | None:
    """Where pendingDeadlineSeconds counts from: the attempt's start or, for a queued job, its
    admission (the Job controller sets the Job's startTime when Kueue unsuspends it). Time spent
    waiting in the queue never counts."""
    if tj.spec.scheduling and tj.spec.scheduling.queue:
        return parse_time((job.get("status") or {}).get("startTime"))
    return status.attempt_start_time or parse_time(job["metadata"].get("creationTimestamp"))


async def creation_refusal(
    ctx: Context, tj: TrainingJob, job: Object, pods: list[Object], now: datetime
) -> str | None:
    """Why the Job controller cannot create the workers (a ResourceQuota, a LimitRange, an
    admission webhook or policy): the message of the Job's newest FailedCreate Event. Asked only
    while workers are missing a while after the Job was created (one API call then)."""
    created = parse_time(job["metadata"].get("creationTimestamp"))
    if len(pods) >= tj.spec.workers or created is None:
        return None
    if (now - created).total_seconds() < MISSING_WORKERS_GRACE_SECONDS:
        return None
    meta = job["metadata"]
    selector = f"involvedObject.uid={meta['uid']},reason=FailedCreate"
    events = await ctx.kube.list(r.EVENT, meta["namespace"], field_selector=selector)
    if not events:
        return None
    newest = max(events, key=lambda e: str(e.get("lastTimestamp") or e.get("eventTime") or ""))
    return str(newest.get("message") or "")[:1000] or None


async def refuse_if_namespace_terminating(ctx: Context, tj: TrainingJob, attempt: int) -> None:
    """Raise Abandoned when the namespace is being deleted (the usual reason a whole gang is
    stopped from outside), before a new attempt is decided. Asked with a dry run of the attempt's
    Job: the NamespaceLifecycle admission refuses it there, and no namespace read is needed (the
    operator may hold only namespaced Roles)."""
    try:
        await ctx.kube.apply(stamped(desired_job(tj, attempt)), force=False, dry_run=True)
    except ApiError as err:
        if err.namespace_terminating:
            raise abandoned(err) from None


def stopped_from_outside(failed: list[Object]) -> bool:
    """Every failed worker was deleted (and so stopped) and none was preempted: someone deleted the
    gang (kubectl, the namespace's deletion), the program did not fail. A worker that exited by
    itself, even on SIGTERM (143), is not this: the failure policy judges it."""
    return bool(failed) and all(
        p["metadata"].get("deletionTimestamp") and not is_preemption(p) for p in failed
    )
