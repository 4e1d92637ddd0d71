"""Reconcile a TrainingJob: one Indexed Job per attempt, gang restarts, deadlines, TTL, train -> serve.

Crash safety. Each decision that must not be taken twice (the next attempt: a restart, a
preemption, a spec change, a suspension; a failure) is written to status first, refused if the
object changed since it was read (a resourceVersion precondition), and only then acted on. What
the action leaves to do is derived from what exists: Jobs of attempts older than
`status.attempt` are deleted on every reconcile; a Job for the current attempt is created only
when no pod of an earlier attempt is left (GPUs are never double-booked, two attempts never share
a checkpoint directory); a worker belongs to an attempt by its Job's UID, never by a label alone.
So the operator may stop between any two API calls and carry on where it was.

Edits. A change to what shapes the workers (image, command, env, resources, worker count...)
of a running job restarts the gang from its last checkpoint with the new template (reason
SpecChanged; not counted against maxRestarts, no backoff). Run-policy and failure-policy changes
apply at once. A finished job does not run again.

Upgrades. Only an edit restarts a running attempt: a new operator release (or setting) that
renders the same spec differently leaves it running, and its template applies to the next
attempt. Each attempt's Job records what the user asked of its workers (worker_spec_hash).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from kubeforge.api.common import Condition, ConditionStatus
from kubeforge.api.trainingjob import (
    Failure,
    FailurePolicy,
    OutputModel,
    TrainingJob,
    TrainingJobStatus,
    TrainingPhase,
)
from kubeforge.builders.network import build_training_job_network_policy
from kubeforge.builders.output import build_output_model_deployment, created_by
from kubeforge.builders.trainingjob import (
    ATTEMPT_LABEL,
    build_headless_service,
    service_name,
)
from kubeforge.controllers.attempts import (
    creation_refusal,
    desired_job,
    pending_since,
    refuse_if_namespace_terminating,
    stopped_from_outside,
    workers_respecified,
)
from kubeforge.controllers.context import ChildConflict, Context
from kubeforge.controllers.crashpoints import crash_point
from kubeforge.controllers.failures import abandoned, as_failure
from kubeforge.controllers.invalid import load_or_refuse
from kubeforge.controllers.proposals import propose
from kubeforge.controllers.status_patch import write_status
from kubeforge.controllers.workqueue import Surfaced
from kubeforge.k8s import resources as r
from kubeforge.k8s.client import ApiError
from kubeforge.k8s.semantic import controller_uid
from kubeforge.status.conditions import get_condition
from kubeforge.status.gitops import ReconcileFailure
from kubeforge.status.trainingjob import (
    backoff_seconds,
    classify_failure,
    earliest_failure,
    failed_at,
    gitops_conditions,
    gpu_seconds,
    is_preemption,
    job_failure,
    observe_attempt,
    phase_conditions,
    phase_reason,
    reported_checkpoint,
    reported_validation,
)

log = logging.getLogger(__name__)
FINISHED = (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED)
Object = dict[str, Any]
# how soon to look again while an earlier attempt's pods are terminating (their events also wake us)
LEFTOVER_RECHECK_SECONDS = 2.0
REFUSAL_RECHECK_SECONDS = 5.0
# a gang stopped from outside (its workers deleted, none failed by itself) is left this long
# before it is restarted: when its namespace or the TrainingJob is being deleted, it is gone by then
STOPPED_GANG_GRACE_SECONDS = 5.0


class _Step:
    """The status being built in one reconcile, the object it was read from, and the events to announce."""

    def __init__(self, tj: TrainingJob, body: Object, now: datetime) -> None:
        self.tj = tj
        self.body = body
        self.now = now
        self.status = tj.status.model_copy(deep=True) if tj.status else TrainingJobStatus()
        self.reason, self.message = phase_reason(self.status.conditions, self.status.phase)
        self.events: list[tuple[str, str, str]] = []
        # what keeps the workers from being created (a quota, an admission policy): in status as a
        # failure (Stalled), looked at again soon, never retried with a backoff
        self.blocked: ReconcileFailure | None = None

    def phase(self, phase: TrainingPhase, reason: str, message: str, event: str | None = None) -> None:
        before = self.status.phase
        conditions: list[Condition] = list(self.status.conditions or [])
        self.status.conditions = phase_conditions(
            conditions, phase, reason, message, self.tj.metadata.generation, self.now
        )
        self.status.phase = phase
        self.reason, self.message = reason, message
        if before != phase or event:
            self.events.append(
                (event or ("Warning" if phase == TrainingPhase.FAILED else "Normal"), reason, message)
            )

    def wire(self, failure: ReconcileFailure | None = None) -> Object:
        """The status as written: bookkeeping fields and the GitOps conditions filled in."""
        status, tj = self.status, self.tj
        status.observed_generation = tj.metadata.generation
        status.restarts = status.restarts or 0
        status.attempt = status.attempt or 0
        status.workers = f"{status.active_workers or 0}/{tj.spec.workers}"
        if status.phase is None:
            self.phase(TrainingPhase.PENDING, "Created", "the TrainingJob was accepted")
        assert status.phase is not None
        status.conditions = gitops_conditions(
            list(status.conditions or []),
            status.phase,
            self.reason,
            self.message,
            failure,
            tj.metadata.generation,
            self.now,
        )
        return status.wire()

    async def commit(self, ctx: Context) -> None:
        """Make the decisions taken so far durable before acting on them.

        Refused (409, retried) if the object changed since it was read: a decision is never based
        on a stale status, so no restart is counted twice.
        """
        self.body = await write_status(ctx, r.TRAINING_JOB, self.body, self.wire(), precondition=True)


def _seconds_left(now: datetime, since: datetime | None, limit: int | None) -> float | None:
    """Seconds until a deadline of `limit` seconds from `since`; None when there is no such deadline."""
    if since is None or not limit:
        return None
    return (since + timedelta(seconds=limit) - now).total_seconds()


def _gpus_per_worker(tj: TrainingJob) -> int:
    return tj.spec.gpu.resource_count if tj.spec.gpu else 0


def _ours(ctx: Context, kind: str, tj: TrainingJob) -> list[Object]:
    """Cached children of `kind` labelled with this job's name and controlled by its UID."""
    objects = ctx.cache.owned(kind, "trainingjob", tj.metadata.namespace or "", tj.metadata.name)
    return [o for o in objects if controller_uid(o) == tj.metadata.uid]


def _jobs_by_attempt(ctx: Context, tj: TrainingJob) -> dict[int, Object]:
    jobs: dict[int, Object] = {}
    for job in _ours(ctx, r.JOB.kind, tj):
        attempt = (job["metadata"].get("labels") or {}).get(ATTEMPT_LABEL, "")
        if attempt.isdigit():
            jobs[int(attempt)] = job
    return jobs


def _pods_of(ctx: Context, tj: TrainingJob, job: Object) -> list[Object]:
    """The workers of one attempt: pods controlled by that Job's UID (a label alone would also match
    the terminating pods of an earlier attempt, or of a deleted job of the same name)."""
    pods = ctx.cache.owned(r.POD.kind, "trainingjob", tj.metadata.namespace or "", tj.metadata.name)
    return [p for p in pods if controller_uid(p) == job["metadata"]["uid"]]


def _leftover_pods(ctx: Context, tj: TrainingJob) -> list[Object]:
    """Pods with this job's labels that belong to no current attempt (earlier attempts, predecessors)."""
    return ctx.cache.owned(r.POD.kind, "trainingjob", tj.metadata.namespace or "", tj.metadata.name)


def _job_finished(job: Object) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True" for c in conditions)


async def _sweep(ctx: Context, step: _Step, jobs: dict[int, Object]) -> None:
    """Delete the Jobs of attempts older than the current one: the second half of a decided restart."""
    current = step.status.attempt or 0
    for attempt, job in sorted(jobs.items()):
        if attempt < current:
            await ctx.delete_child(r.JOB, job)
            crash_point("attempt-deleted")


async def _finish_ttl(ctx: Context, step: _Step, jobs: dict[int, Object]) -> float | None:
    """After ttlSecondsAfterFinished, delete the workers, the Service and the NetworkPolicy; the TrainingJob stays."""
    tj, status = step.tj, step.status
    run_policy = tj.spec.run_policy
    if not run_policy or run_policy.ttl_seconds_after_finished is None or status.completion_time is None:
        return None
    due = status.completion_time + timedelta(seconds=run_policy.ttl_seconds_after_finished)
    if step.now < due:
        return (due - step.now).total_seconds()
    for job in jobs.values():
        await ctx.delete_child(r.JOB, job)
    assert tj.metadata.uid is not None
    for resource in (r.SERVICE, r.NETWORK_POLICY):  # both named `<name>-workers`
        await ctx.ensure_absent(resource, tj.metadata.namespace or "", service_name(tj), tj.metadata.uid)
    return None


async def _hand_off(ctx: Context, step: _Step, tj: TrainingJob) -> None:
    """Train -> serve: create the ModelDeployment named by spec.output, once.

    It is created, never updated: what a user or an autoscaler changes afterwards (replicas,
    anything) stays. A ModelDeployment of that name that this job did not create is left alone
    and reported as a conflict.
    """
    output = tj.spec.output
    if output is None:
        return
    md = build_output_model_deployment(tj)
    record = OutputModel(uri=output.uri, model_deployment=md["metadata"]["name"] if md else None)
    if step.status.output_model == record:
        return  # handed off already
    if md is not None:
        ns, name = tj.metadata.namespace or "", md["metadata"]["name"]
        live = await ctx.live(r.MODEL_DEPLOYMENT, ns, name)
        if live is None:
            await ctx.kube.apply(md, force=False)  # one that appears meanwhile is a conflict, not ours
            step.events.append(("Normal", "ModelHandedOff", f"ModelDeployment {name} serves {output.uri}"))
        elif not created_by(live, tj):
            raise ChildConflict(
                "ModelDeployment", ns, name, "not created by this TrainingJob (spec.output.modelDeployment)"
            )
    step.status.output_model = record


def _fail(step: _Step, reason: str, message: str) -> None:
    step.status.completion_time = step.status.completion_time or step.now
    step.phase(TrainingPhase.FAILED, reason, message)


async def _next_attempt(
    ctx: Context, step: _Step, jobs: dict[int, Object], reason: str, message: str, delay: float, event: str
) -> float:
    """Decide on the next attempt (durably), then remove the current one."""
    status = step.status
    status.attempt = (status.attempt or 0) + 1
    status.restart_after = step.now + timedelta(seconds=delay) if delay else None
    status.attempt_start_time = None
    status.active_workers = 0
    step.phase(TrainingPhase.RESTARTING, reason, message, event=event)
    await step.commit(ctx)
    crash_point("attempt-committed")
    await _sweep(ctx, step, jobs)
    return max(delay, LEFTOVER_RECHECK_SECONDS)


async def _on_failure(
    ctx: Context, step: _Step, jobs: dict[int, Object], failure: Failure, pods: list[Object], preempted: bool
) -> float | None:
    tj, status = step.tj, step.status
    # the workers of a namespace being deleted die with it (their pods, or the Job's own Failed
    # condition once they are gone): that is not theirs to count
    await refuse_if_namespace_terminating(ctx, tj, (status.attempt or 0) + 1)
    policy = tj.spec.failure_policy or FailurePolicy()
    status.last_failure = failure
    status.gpu_seconds = (status.gpu_seconds or 0.0) + gpu_seconds(pods, _gpus_per_worker(tj), step.now)
    if preempted and not policy.count_preemptions:
        status.preemptions = (status.preemptions or 0) + 1
        delay = backoff_seconds(policy, 1)
        return await _next_attempt(ctx, step, jobs, "Preempted", failure.message or "", delay, "Warning")
    restarts = status.restarts or 0
    if failure.retryable and restarts < policy.max_restarts:
        status.restarts = restarts + 1
        message = (
            f"{failure.message}; gang restart {restarts + 1}/{policy.max_restarts} from the last checkpoint"
        )
        delay = backoff_seconds(policy, restarts + 1)
        return await _next_attempt(ctx, step, jobs, "RetryableFailure", message, delay, "Warning")
    if failure.retryable:
        _fail(step, "RestartsExhausted", f"{failure.message}; maxRestarts ({policy.max_restarts}) exhausted")
    else:
        _fail(step, "PermanentFailure", failure.message or "a worker failed")
    # durably, before the workers still running are stopped (_finished): a crash, a lost Lease or
    # a refused status write in between must not leave a Running status without its Job (which
    # the next reconcile would create again, running the job once more)
    step.status.active_workers = 0
    await step.commit(ctx)
    crash_point("failure-committed")
    return None


async def _stop(ctx: Context, step: _Step, job: Object, reason: str, message: str) -> None:
    """Fail the job for good (durably), then stop the workers that still run."""
    _fail(step, reason, message)
    step.status.active_workers = 0
    await step.commit(ctx)
    await ctx.delete_child(r.JOB, job)


async def _suspend(ctx: Context, step: _Step, jobs: dict[int, Object]) -> None:
    status = step.status
    message = "spec.runPolicy.suspend is true: workers removed"
    if (status.attempt or 0) in jobs:
        # resuming starts a fresh attempt from the checkpoint; the running one is removed
        status.attempt = (status.attempt or 0) + 1
        status.active_workers = 0
        step.phase(TrainingPhase.SUSPENDED, "Suspended", message)
        await step.commit(ctx)
        await _sweep(ctx, step, jobs)
    status.active_workers = 0
    status.start_time = None  # activeDeadlineSeconds runs afresh from the resumed workers' start
    step.phase(TrainingPhase.SUSPENDED, "Suspended", message)


def _queued(step: _Step, was_running: bool) -> None:
    """The workers wait for Kueue: not admitted yet, or evicted (preempted by a higher-priority
    workload, a reclaimed quota...). Kueue evicts by suspending the Job again, and the Job controller
    then removes its pods without counting them as failed: a requeue, never a worker failure. The
    same Job (Kueue's Workload) stays in the queue, so Kueue requeues it by its own policy, and the
    workers resume from the last checkpoint once it is admitted again."""
    tj, status = step.tj, step.status
    queue = tj.spec.scheduling.queue if tj.spec.scheduling else ""
    status.active_workers = 0
    if was_running:
        status.preemptions = (status.preemptions or 0) + 1
        status.start_time = None  # activeDeadlineSeconds does not run while the job waits in the queue
        message = (
            f"Kueue evicted the workers of attempt {status.attempt or 0} (preempted, or its quota reclaimed); "
            f"waiting in queue {queue} to be admitted again, then resuming from the last checkpoint"
        )
        step.phase(TrainingPhase.PENDING, "Requeued", message, event="Warning")
    elif step.reason != "Requeued" or step.status.phase != TrainingPhase.PENDING:
        step.phase(TrainingPhase.PENDING, "Queued", f"waiting for Kueue to admit the workers (queue {queue})")


async def _start_attempt(ctx: Context, step: _Step) -> float | None:
    """Create the current attempt's Job, once every worker of earlier attempts has exited."""
    tj, status = step.tj, step.status
    attempt = status.attempt or 0
    leftovers = _leftover_pods(ctx, tj)
    if leftovers:
        message = f"attempt {attempt}: waiting for {len(leftovers)} worker(s) of an earlier attempt to exit"
        phase = TrainingPhase.RESTARTING if attempt > 0 else TrainingPhase.PENDING
        step.phase(phase, "WaitingForWorkersToExit", message)
        return LEFTOVER_RECHECK_SECONDS
    queue = tj.spec.scheduling.queue if tj.spec.scheduling else None
    await ctx.create_child(desired_job(tj, attempt))
    status.attempt_start_time = step.now
    status.restart_after = None
    message = f"attempt {attempt}: {tj.spec.workers} worker(s) created" + (
        f", queued in {queue}" if queue else ""
    )
    step.phase(TrainingPhase.PENDING, "WorkersCreated", message)
    return None


async def _run(ctx: Context, step: _Step, jobs: dict[int, Object]) -> float | None:
    tj, status = step.tj, step.status
    run_policy = tj.spec.run_policy
    attempt = status.attempt or 0
    await ctx.ensure(build_headless_service(tj))
    assert tj.metadata.uid is not None
    await ctx.ensure_optional(
        r.NETWORK_POLICY,
        build_training_job_network_policy(tj, ctx.settings),
        tj.metadata.namespace or "",
        service_name(tj),
        tj.metadata.uid,
    )

    if run_policy and run_policy.suspend:
        await _suspend(ctx, step, jobs)
        return None
    if status.restart_after and step.now < status.restart_after:
        return (status.restart_after - step.now).total_seconds()
    job = jobs.get(attempt)
    if job is None:
        return await _start_attempt(ctx, step)

    if workers_respecified(tj, status, job):
        message = f"the worker template changed (generation {tj.metadata.generation}): restarting the gang"
        return await _next_attempt(ctx, step, jobs, "SpecChanged", message, 0, "Normal")

    if job["metadata"].get("deletionTimestamp"):
        # the operator deletes only attempts it has moved past: someone else deletes this one (its
        # namespace is being deleted, or a person): not a failure of the workers; once it is gone,
        # the attempt starts again
        message = (
            f"attempt {attempt}: its Job {job['metadata']['name']} is being deleted, not by the operator"
        )
        step.phase(status.phase or TrainingPhase.PENDING, "JobDeleted", message)
        return LEFTOVER_RECHECK_SECONDS

    pods = _pods_of(ctx, tj, job)
    obs = observe_attempt(job, pods, tj.spec.workers)
    was_running = status.phase == TrainingPhase.RUNNING or (status.active_workers or 0) > 0
    checkpoint = reported_checkpoint(pods)
    if checkpoint is not None and (
        status.last_checkpoint is None or (checkpoint.step or 0) >= (status.last_checkpoint.step or 0)
    ):
        status.last_checkpoint = checkpoint
    validation = reported_validation(pods)
    if validation is not None and (
        status.validation is None or (validation.step or 0) >= (status.validation.step or 0)
    ):
        status.validation = validation
    status.active_workers = obs.running
    status.succeeded_workers = obs.succeeded
    status.failed_workers = len(obs.failed_pods)

    if obs.suspended_by_queue:
        # before the failures: the pods of an evicted Job are being removed, they did not fail
        _queued(step, was_running)
        return None
    policy = tj.spec.failure_policy or FailurePolicy()
    if stopped_from_outside(obs.failed_pods):
        stopped = max((failed_at(p) or step.now for p in obs.failed_pods), default=step.now)
        wait = STOPPED_GANG_GRACE_SECONDS - (step.now - stopped).total_seconds()
        if wait > 0:
            return wait
        await refuse_if_namespace_terminating(ctx, tj, attempt + 1)
        status.last_failure = classify_failure(earliest_failure(obs.failed_pods), policy, step.now)
        status.gpu_seconds = (status.gpu_seconds or 0.0) + gpu_seconds(pods, _gpus_per_worker(tj), step.now)
        message = (
            f"attempt {attempt}: its workers were deleted or stopped from outside, none failed by itself; "
            "starting the gang again from the last checkpoint (not counted against maxRestarts)"
        )
        return await _next_attempt(ctx, step, jobs, "WorkersStopped", message, 0, "Warning")
    if obs.failed_pods:
        first = earliest_failure(obs.failed_pods)
        failure = classify_failure(first, policy, step.now)
        return await _on_failure(ctx, step, jobs, failure, pods, is_preemption(first))
    if obs.job_failure is not None:
        failure = job_failure(job, obs.job_failure, step.now)
        return await _on_failure(ctx, step, jobs, failure, pods, False)
    if obs.complete:
        status.gpu_seconds = (status.gpu_seconds or 0.0) + gpu_seconds(pods, _gpus_per_worker(tj), step.now)
        status.completion_time = step.now
        status.active_workers = 0
        step.phase(TrainingPhase.SUCCEEDED, "TrainingSucceeded", f"all {tj.spec.workers} worker(s) exited 0")
        return None

    active_deadline = run_policy.active_deadline_seconds if run_policy else None
    if obs.started is not None:
        status.start_time = status.start_time or obs.started
    active_left = _seconds_left(step.now, status.start_time, active_deadline)
    if active_left is not None and active_left <= 0:
        message = f"running longer than activeDeadlineSeconds ({active_deadline}s)"
        await _stop(ctx, step, job, "DeadlineExceeded", message)
        return None
    if obs.started is not None:
        step.phase(
            TrainingPhase.RUNNING,
            "AllWorkersRunning",
            f"attempt {attempt}: {obs.running}/{tj.spec.workers} workers running",
        )
        return max(1.0, active_left) if active_left is not None else None

    # not all workers running yet
    reason, message = "WorkersPending", f"attempt {attempt}: {obs.running}/{tj.spec.workers} workers running"
    refusal = await creation_refusal(ctx, tj, job, pods, step.now)
    pending_message = obs.pending_message or refusal
    if refusal:
        reason, message = "FailedCreate", f"{message}; the workers cannot be created: {refusal}"
        step.blocked = ReconcileFailure(reason, message)
    elif obs.pending_message:
        reason, message = "Unschedulable", f"{message}; {obs.pending_message}"
    pending_deadline = run_policy.pending_deadline_seconds if run_policy else None
    pending_left = _seconds_left(step.now, pending_since(tj, status, job), pending_deadline)
    # the Job's Events wake no reconcile: while workers are missing, look again
    recheck = REFUSAL_RECHECK_SECONDS if refusal or len(pods) < tj.spec.workers else None
    if pending_left is not None:
        if pending_left <= 0:
            step.blocked = None
            message = f"workers not all running within {pending_deadline}s; {pending_message or message}"
            await _stop(ctx, step, job, "PendingDeadlineExceeded", message)
            return None
        if status.phase != TrainingPhase.RESTARTING or pending_message:
            step.phase(TrainingPhase.PENDING, reason, message)
        return min(max(1.0, pending_left), recheck or pending_left)
    step.phase(TrainingPhase.PENDING, reason, message)
    return recheck


async def _finished(ctx: Context, step: _Step, jobs: dict[int, Object]) -> float | None:
    """A finished job: stop workers a failure left running, hand the model off, then the TTL."""
    job = jobs.get(step.status.attempt or 0)
    if job is not None and not _job_finished(job) and step.status.phase == TrainingPhase.FAILED:
        await ctx.delete_child(r.JOB, job)  # e.g. a deadline: the decision was written, the delete not done
    follow = None
    if step.status.phase == TrainingPhase.SUCCEEDED:
        # the job with the status this reconcile builds: the validation its workers just reported
        tj = step.tj.model_copy(update={"status": step.status})
        await _hand_off(ctx, step, tj)
        step.status.proposal, follow = await propose(ctx, tj, step.status.proposal, step.now, step.events)
    ttl = await _finish_ttl(ctx, step, jobs)
    return min((s for s in (follow, ttl) if s is not None), default=None)


async def _reconcile(ctx: Context, step: _Step) -> float | None:
    jobs = _jobs_by_attempt(ctx, step.tj)
    await _sweep(ctx, step, jobs)
    jobs = {n: job for n, job in jobs.items() if n >= (step.status.attempt or 0)}
    if step.status.phase in FINISHED:
        return await _finished(ctx, step, jobs)
    requeue = await _run(ctx, step, jobs)
    if step.status.phase in FINISHED:
        return await _finished(ctx, step, _jobs_by_attempt(ctx, step.tj))
    return requeue


def _newly_stalled(tj: TrainingJob, failure: ReconcileFailure) -> bool:
    """A Warning Event once per distinct failure, not once per retry."""
    before = get_condition(tj.status.conditions if tj.status else None, "Stalled")
    return (
        before is None
        or before.status != ConditionStatus.TRUE
        or (before.reason, before.message)
        != (
            failure.reason,
            failure.message,
        )
    )


async def reconcile_training_job(ctx: Context, key: tuple[str, str]) -> float | None:
    loaded = await load_or_refuse(ctx, r.TRAINING_JOB, TrainingJob, key, keep_phase=True)
    if loaded is None:
        return None
    body, tj = loaded

    step = _Step(tj, body, ctx.now())
    failure: ReconcileFailure | None = None
    requeue: float | None = None
    unwatched = ctx.unwatched((r.JOB.kind, r.POD.kind), key[0])
    if unwatched:
        # without them, an attempt's Job or its pods look absent: a second gang could be started
        message = f"cannot reconcile while the operator does not watch {'; '.join(unwatched)}"
        failure = ReconcileFailure("WatchRefused", message[:1000])
        await write_status(ctx, r.TRAINING_JOB, step.body, step.wire(failure))
        if _newly_stalled(tj, failure):
            ctx.announce(body, "Warning", failure.reason, failure.message)
        raise Surfaced(f"{failure.reason}: {failure.message}", reason=failure.reason)
    try:
        requeue = await _reconcile(ctx, step)
    except (ChildConflict, ApiError) as err:
        if isinstance(err, ApiError) and err.namespace_terminating:
            raise abandoned(err) from None  # neither a failure nor a reason to start an attempt
        failure = as_failure(err)
        if failure is None:
            raise
    blocked = step.blocked if failure is None else None
    failure = failure or blocked
    await write_status(ctx, r.TRAINING_JOB, step.body, step.wire(failure))
    if failure is not None and _newly_stalled(tj, failure):
        step.events.append(("Warning", failure.reason, failure.message))
    for type_, reason, message in step.events:
        ctx.announce(body, type_, reason, message)
    if failure is not None and blocked is None:
        raise Surfaced(f"{failure.reason}: {failure.message}", reason=failure.reason)
    return requeue
