"""Reconcile a TrainingJob: one Indexed Job per attempt, gang restarts, deadlines, TTL, train -> serve.

The state machine lives in status (attempt, restarts, restartAfter, phase), so the operator can
restart at any moment and carry on where it was.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from kubeforge.api.common import Condition
from kubeforge.api.trainingjob import (
    FailurePolicy,
    OutputModel,
    TrainingJob,
    TrainingJobStatus,
    TrainingPhase,
)
from kubeforge.builders.output import build_output_model_deployment
from kubeforge.builders.trainingjob import build_headless_service, build_worker_job, job_name
from kubeforge.controllers.context import Context
from kubeforge.controllers.invalid import load_or_refuse
from kubeforge.controllers.status_patch import write_status
from kubeforge.k8s import resources as r
from kubeforge.status.conditions import get_condition
from kubeforge.status.trainingjob import (
    backoff_seconds,
    classify_failure,
    gpu_seconds,
    is_preemption,
    observe_attempt,
    phase_conditions,
    reported_checkpoint,
)

log = logging.getLogger(__name__)
FINISHED = (TrainingPhase.SUCCEEDED, TrainingPhase.FAILED)


class _Step:
    """The status being built in one reconcile, and the events to announce."""

    def __init__(self, tj: TrainingJob, body: dict[str, Any], now: datetime) -> None:
        self.tj = tj
        self.body = body
        self.now = now
        self.status = tj.status.model_copy(deep=True) if tj.status else TrainingJobStatus()
        self.events: list[tuple[str, str, str]] = []

    def phase(self, phase: TrainingPhase, reason: str, message: str, event: str | None = None) -> None:
        before = self.status.phase
        conditions: list[Condition] = list(self.status.conditions or [])
        self.status.conditions = phase_conditions(
            conditions, phase, reason, message, self.tj.metadata.generation, self.now
        )
        self.status.phase = phase
        if before != phase or event:
            self.events.append(
                (event or ("Warning" if phase == TrainingPhase.FAILED else "Normal"), reason, message)
            )


def _seconds_left(now: datetime, since: datetime | None, limit: int | None) -> float | None:
    """Seconds until a deadline of `limit` seconds from `since`; None when there is no such deadline."""
    if since is None or not limit:
        return None
    return (since + timedelta(seconds=limit) - now).total_seconds()


def _gpus_per_worker(tj: TrainingJob) -> int:
    return tj.spec.gpu.resource_count if tj.spec.gpu else 0


async def _delete_attempt(ctx: Context, tj: TrainingJob, attempt: int) -> None:
    ns = tj.metadata.namespace or ""
    name = job_name(tj, attempt)
    # foreground would keep the Job until its pods are gone; background frees the name at once
    await ctx.kube.delete(r.JOB, ns, name, propagation="Background")
    ctx.cache.remove(r.JOB.kind, ns, name)


def _attempt_pods(ctx: Context, tj: TrainingJob, attempt: int) -> list[dict[str, Any]]:
    pods = ctx.cache.owned(r.POD.kind, "trainingjob", tj.metadata.namespace or "", tj.metadata.name)
    return [
        p for p in pods if (p["metadata"].get("labels") or {}).get("kubeforge.io/attempt") == str(attempt)
    ]


async def _finish_ttl(ctx: Context, step: _Step) -> float | None:
    """After ttlSecondsAfterFinished, delete the workers and the Service; the TrainingJob stays."""
    tj, status = step.tj, step.status
    run_policy = tj.spec.run_policy
    if not run_policy or run_policy.ttl_seconds_after_finished is None or status.completion_time is None:
        return None
    due = status.completion_time + timedelta(seconds=run_policy.ttl_seconds_after_finished)
    if step.now < due:
        return (due - step.now).total_seconds()
    ns = tj.metadata.namespace or ""
    for attempt in range((status.attempt or 0) + 1):
        if ctx.cache.get(r.JOB.kind, ns, job_name(tj, attempt)) is not None:
            await _delete_attempt(ctx, tj, attempt)
    await ctx.ensure_absent(r.SERVICE, ns, tj.metadata.name)
    return None


async def _hand_off(ctx: Context, step: _Step) -> None:
    """Train -> serve: create or update the ModelDeployment named by spec.output."""
    output = step.tj.spec.output
    if output is None:
        return
    md = build_output_model_deployment(step.tj)
    if md is not None:
        await ctx.kube.apply(md)
    record = OutputModel(uri=output.uri, model_deployment=md["metadata"]["name"] if md else None)
    if step.status.output_model != record:
        step.status.output_model = record
        if md is not None:
            step.events.append(
                ("Normal", "ModelHandedOff", f"ModelDeployment {md['metadata']['name']} serves {output.uri}")
            )


def _fail(step: _Step, reason: str, message: str) -> None:
    step.status.completion_time = step.status.completion_time or step.now
    step.phase(TrainingPhase.FAILED, reason, message)


async def _new_attempt(ctx: Context, step: _Step, reason: str, message: str, delay: int) -> float:
    status = step.status
    await _delete_attempt(ctx, step.tj, status.attempt or 0)
    status.attempt = (status.attempt or 0) + 1
    status.restart_after = step.now + timedelta(seconds=delay)
    status.attempt_start_time = None
    step.phase(TrainingPhase.RESTARTING, reason, message, event="Warning")
    return float(delay)


async def _on_failure(ctx: Context, step: _Step, failed_pods: list[dict[str, Any]]) -> float | None:
    tj, status = step.tj, step.status
    policy = tj.spec.failure_policy or FailurePolicy()
    failure = classify_failure(failed_pods[0], policy, step.now)
    status.last_failure = failure
    status.gpu_seconds = (status.gpu_seconds or 0.0) + gpu_seconds(
        _attempt_pods(ctx, tj, status.attempt or 0), _gpus_per_worker(tj), step.now
    )
    if is_preemption(failed_pods[0]) and not policy.count_preemptions:
        status.preemptions = (status.preemptions or 0) + 1
        return await _new_attempt(ctx, step, "Preempted", failure.message or "", backoff_seconds(policy, 1))
    restarts = status.restarts or 0
    if failure.retryable and restarts < policy.max_restarts:
        status.restarts = restarts + 1
        message = (
            f"{failure.message}; gang restart {restarts + 1}/{policy.max_restarts} from the last checkpoint"
        )
        return await _new_attempt(
            ctx, step, "RetryableFailure", message, backoff_seconds(policy, restarts + 1)
        )
    if failure.retryable:
        _fail(step, "RestartsExhausted", f"{failure.message}; maxRestarts ({policy.max_restarts}) exhausted")
    else:
        _fail(step, "PermanentFailure", failure.message or "a worker failed")
    return None


async def _run(ctx: Context, step: _Step) -> float | None:
    tj, status = step.tj, step.status
    ns = tj.metadata.namespace or ""
    run_policy = tj.spec.run_policy
    attempt = status.attempt or 0
    await ctx.ensure(build_headless_service(tj))
    job = ctx.cache.get(r.JOB.kind, ns, job_name(tj, attempt))

    if run_policy and run_policy.suspend:
        if job is not None:
            await _delete_attempt(ctx, tj, attempt)
            status.attempt = attempt + 1  # resuming starts a fresh attempt from the checkpoint
        status.active_workers = 0
        step.phase(TrainingPhase.SUSPENDED, "Suspended", "spec.runPolicy.suspend is true: workers removed")
        return None

    if status.restart_after and step.now < status.restart_after:
        return (status.restart_after - step.now).total_seconds()

    if job is None:
        queue = tj.spec.scheduling.queue if tj.spec.scheduling else None
        job = await ctx.kube.apply(build_worker_job(tj, attempt, suspend=queue is not None))
        ctx.cache.upsert(r.JOB.kind, job)
        status.attempt_start_time = step.now
        status.restart_after = None
        message = f"attempt {attempt}: {tj.spec.workers} worker(s) created" + (
            f", queued in {queue}" if queue else ""
        )
        step.phase(TrainingPhase.PENDING, "WorkersCreated", message)
        return None

    pods = _attempt_pods(ctx, tj, attempt)
    obs = observe_attempt(job, pods, tj.spec.workers)
    checkpoint = reported_checkpoint(pods)
    if checkpoint is not None and (
        status.last_checkpoint is None or (checkpoint.step or 0) >= (status.last_checkpoint.step or 0)
    ):
        status.last_checkpoint = checkpoint
    status.active_workers = obs.running
    status.succeeded_workers = obs.succeeded
    status.failed_workers = len(obs.failed_pods)

    if obs.failed_pods:
        return await _on_failure(ctx, step, obs.failed_pods)
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
        await _delete_attempt(ctx, tj, attempt)
        _fail(step, "DeadlineExceeded", f"running longer than activeDeadlineSeconds ({active_deadline}s)")
        return None
    if obs.started is not None:
        step.phase(
            TrainingPhase.RUNNING,
            "AllWorkersRunning",
            f"attempt {attempt}: {obs.running}/{tj.spec.workers} workers running",
        )
        return max(1.0, active_left) if active_left is not None else None

    # not all workers running yet
    if obs.suspended_by_queue:
        step.phase(
            TrainingPhase.PENDING,
            "Queued",
            f"waiting for Kueue to admit the workers (queue {tj.spec.scheduling.queue if tj.spec.scheduling else ''})",
        )
        return None
    reason, message = "WorkersPending", f"attempt {attempt}: {obs.running}/{tj.spec.workers} workers running"
    if obs.pending_message:
        reason, message = "Unschedulable", f"{message}; {obs.pending_message}"
    pending_deadline = run_policy.pending_deadline_seconds if run_policy else None
    pending_left = _seconds_left(step.now, status.attempt_start_time, pending_deadline)
    if pending_left is not None:
        if pending_left <= 0:
            await _delete_attempt(ctx, tj, attempt)
            _fail(
                step,
                "PendingDeadlineExceeded",
                f"workers not all running within {pending_deadline}s; {obs.pending_message or message}",
            )
            return None
        if status.phase != TrainingPhase.RESTARTING or obs.pending_message:
            step.phase(TrainingPhase.PENDING, reason, message)
        return max(1.0, pending_left)
    step.phase(TrainingPhase.PENDING, reason, message)
    return None


async def reconcile_training_job(ctx: Context, key: tuple[str, str]) -> float | None:
    loaded = await load_or_refuse(ctx, r.TRAINING_JOB, TrainingJob, key)
    if loaded is None:
        return None
    body, tj = loaded

    step = _Step(tj, body, ctx.now())
    if step.status.phase in FINISHED:
        if step.status.phase == TrainingPhase.SUCCEEDED:
            await _hand_off(ctx, step)
        requeue = await _finish_ttl(ctx, step)
    else:
        requeue = await _run(ctx, step)
        if step.status.phase == TrainingPhase.SUCCEEDED:
            await _hand_off(ctx, step)
            requeue = await _finish_ttl(ctx, step)
        elif step.status.phase == TrainingPhase.FAILED:
            requeue = await _finish_ttl(ctx, step)

    status = step.status
    status.observed_generation = tj.metadata.generation
    status.restarts = status.restarts or 0
    status.attempt = status.attempt or 0
    status.workers = f"{status.active_workers or 0}/{tj.spec.workers}"
    if get_condition(status.conditions, "Created") is None:
        step.phase(TrainingPhase.PENDING, "Created", "the TrainingJob was accepted")
    await write_status(ctx, r.TRAINING_JOB, body, status.wire())
    for type_, reason, message in step.events:
        ctx.announce(body, type_, reason, message)
    return requeue
