"""The model cache's status (status.cache), folded from its fill Job and the Job's pod (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kubeforge.api.modeldeployment import CacheState, CacheStatus
from kubeforge.builders.cache import FILL_CONTAINER
from kubeforge.status.conditions import parse_time
from kubeforge.status.pods import PodProblem, pod_problem

Object = dict[str, Any]
RETRY_CAP_SECONDS = 3600.0


@dataclass(frozen=True)
class CacheObservation:
    """What the controller saw of the cache for the spec's current key."""

    claim_name: str
    key: str
    job_name: str
    job: Object | None  # our fill Job for this key, None before it is created
    pod: Object | None = None  # its latest pod: read while it fills, and once when the Job finished
    sources: int = 1
    retries: int = 0  # fills of this key started again after a failure
    retry_at: datetime | None = None  # when the failed Job is deleted for another fill
    # status says this key's cache is complete, and its fill Job is gone (a TTL, a person): the
    # cache is whole on the claim; it is not filled again
    filled: bool = False


def cache_ready(obs: CacheObservation | None) -> bool:
    """Whether the cache of the spec's key is complete: its fill Job completed, or did before it went."""
    return obs is not None and (obs.filled or fill_complete(obs.job))


def _job_condition(job: Object, type_: str) -> Object | None:
    return next(
        (
            c
            for c in (job.get("status") or {}).get("conditions") or []
            if c.get("type") == type_ and c.get("status") == "True"
        ),
        None,
    )


def _terminated(pod: Object | None) -> Object | None:
    for status in ((pod or {}).get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == FILL_CONTAINER:
            state = status.get("state") or {}
            return state.get("terminated") or (status.get("lastState") or {}).get("terminated")
    return None


def fill_summary(pod: Object | None) -> dict[str, Any] | None:
    """The fill's JSON summary (bytes, digest, completedAt) from its termination message; None when absent."""
    terminated = _terminated(pod)
    try:
        summary = json.loads((terminated or {}).get("message") or "")
    except json.JSONDecodeError:
        return None
    if not isinstance(summary, dict) or not isinstance(summary.get("digest"), str):
        return None
    return summary


def fill_failure(job: Object, pod: Object | None) -> str:
    """Why a fill failed: the fill's own words (termination message), else the Job's condition."""
    terminated = _terminated(pod) or {}
    message = str(terminated.get("message") or "").strip()
    if not message:
        condition = _job_condition(job, "Failed") or {}
        message = f"{condition.get('reason', 'Failed')}: {condition.get('message', 'the fill Job failed')}"
    return message[-1000:]


def fill_failed_at(job: Object | None) -> datetime | None:
    """When the fill Job failed; None while it runs, once it completed, or when it is gone."""
    condition = _job_condition(job, "Failed") if job is not None else None
    if condition is None:
        return None
    return parse_time(condition.get("lastTransitionTime")) or parse_time(
        (job or {}).get("metadata", {}).get("creationTimestamp")
    )


def retry_delay(first: float, retries: int) -> float:
    """Seconds from a fill's failure to its retry: `first`, doubling per earlier retry, at most an hour."""
    return float(min(first * 2.0 ** min(retries, 32), max(first, RETRY_CAP_SECONDS)))


def job_finished(job: Object | None) -> bool:
    return job is not None and (
        _job_condition(job, "Complete") is not None or _job_condition(job, "Failed") is not None
    )


def cache_status(obs: CacheObservation, previous: CacheStatus | None) -> CacheStatus:
    """status.cache: Pending (no Job yet), Filling, Ready (with what is known of the fill) or Failed."""
    base: dict[str, Any] = {"claim_name": obs.claim_name, "key": obs.key, "job": obs.job_name}
    same = previous is not None and previous.key == obs.key
    job = obs.job
    if obs.retries:
        base["retries"] = obs.retries
    if obs.filled and same and previous is not None:
        return previous.model_copy(update=base)
    if job is None:
        message = (
            f"filling again after a failure (retry {obs.retries})" if obs.retries else "creating the fill Job"
        )
        return CacheStatus(state=CacheState.PENDING, message=message, **base)
    if _job_condition(job, "Complete") is not None:
        if same and previous is not None and previous.state == CacheState.READY and obs.pod is None:
            return previous.model_copy(update=base)  # read once when the fill completed
        summary = fill_summary(obs.pod)
        if summary is None:
            done = parse_time((job.get("status") or {}).get("completionTime"))
            return CacheStatus(
                state=CacheState.READY,
                completed_at=done,
                message="the fill Job completed, but its pod left no summary (termination message): "
                "the size and digest of the cache are unknown",
                **base,
            )
        return CacheStatus(
            state=CacheState.READY,
            bytes=int(summary["bytes"]) if isinstance(summary.get("bytes"), int) else None,
            digest=str(summary["digest"]),
            completed_at=parse_time(summary.get("completedAt")),
            **base,
        )
    if _job_condition(job, "Failed") is not None:
        if (
            same
            and previous is not None
            and previous.state == CacheState.FAILED
            and previous.retry_at == obs.retry_at
            and obs.pod is None
        ):
            return previous.model_copy(update=base)
        hint = f" (fix the source or its credentials, then delete Job {obs.job_name} to fill again)"
        if obs.retry_at is not None:
            hint = (
                f" (retry {obs.retries + 1} at {obs.retry_at:%Y-%m-%dT%H:%M:%SZ}: fix the source or its "
                f"credentials meanwhile, or delete Job {obs.job_name} to retry now)"
            )
        return CacheStatus(
            state=CacheState.FAILED, message=fill_failure(job, obs.pod) + hint, retry_at=obs.retry_at, **base
        )
    message = f"fetching {obs.sources} source(s) into claim {obs.claim_name} (Job {obs.job_name})"
    problem = fill_problem(obs)
    if problem is not None:
        message += f"; {problem.reason}: {problem.message}"
    return CacheStatus(state=CacheState.FILLING, message=message, **base)


def fill_problem(obs: CacheObservation) -> PodProblem | None:
    """What keeps a fill that has not finished from running: its pod unschedulable (e.g. a claim no
    volume is bound to), an image that cannot be pulled, a crash loop, ..."""
    if obs.pod is None or job_finished(obs.job):
        return None
    return pod_problem(obs.pod)


def needs_pod(
    job: Object | None, previous: CacheStatus | None, key: str, retry_at: datetime | None = None
) -> bool:
    """Whether the controller must read the fill's pod: while it fills (what holds it up), and once
    when the Job of this key has finished and the status does not say how yet (a retry that failed
    has another retry time)."""
    if job is None:
        return False
    if not job_finished(job):
        return True
    want = CacheState.READY if _job_condition(job, "Complete") is not None else CacheState.FAILED
    return previous is None or previous.key != key or previous.state != want or previous.retry_at != retry_at


def fill_complete(job: Object | None) -> bool:
    """Whether the fill Job has completed (the cache of its key is whole)."""
    return job is not None and _job_condition(job, "Complete") is not None
