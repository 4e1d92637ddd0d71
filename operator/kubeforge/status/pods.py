"""What is wrong with a pod, in the words a person acts on (and the reasons kubectl shows)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

IMAGE_PULL_REASONS = {"ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull"}
CONFIG_REASONS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}


@dataclass(frozen=True)
class PodProblem:
    reason: str  # Unschedulable, ImagePullBackOff, CrashLoopBackOff, OOMKilled, ...
    message: str
    pod: str


def _condition(pod: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next(
        (c for c in pod.get("status", {}).get("conditions", []) or [] if c.get("type") == type_), None
    )


def _container_statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    status = pod.get("status", {})
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def pod_problem(pod: dict[str, Any]) -> PodProblem | None:
    """The first problem that keeps a pod from serving, or None."""
    name = pod.get("metadata", {}).get("name", "")
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return None
    scheduled = _condition(pod, "PodScheduled")
    if scheduled and scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        return PodProblem("Unschedulable", scheduled.get("message", "the scheduler found no node"), name)
    for cs in _container_statuses(pod):
        waiting = (cs.get("state") or {}).get("waiting") or {}
        terminated = (cs.get("state") or {}).get("terminated") or {}
        last = (cs.get("lastState") or {}).get("terminated") or {}
        reason = waiting.get("reason", "")
        container = cs.get("name", "")
        if reason in IMAGE_PULL_REASONS:
            return PodProblem("ImagePullBackOff", f"{container}: {waiting.get('message', reason)}", name)
        if terminated.get("reason") == "OOMKilled" or (
            reason == "CrashLoopBackOff" and last.get("reason") == "OOMKilled"
        ):
            return PodProblem(
                "OOMKilled", f"{container} was killed for using more memory than its limit", name
            )
        if reason == "CrashLoopBackOff":
            code = last.get("exitCode")
            detail = f" (last exit code {code})" if code is not None else ""
            return PodProblem("CrashLoopBackOff", f"{container} keeps crashing{detail}", name)
        if reason in CONFIG_REASONS:
            return PodProblem(reason, f"{container}: {waiting.get('message', reason)}", name)
    return None


def pod_ready(pod: dict[str, Any]) -> bool:
    ready = _condition(pod, "Ready")
    return (
        ready is not None and ready.get("status") == "True" and not pod["metadata"].get("deletionTimestamp")
    )


def pending_message(pods: list[dict[str, Any]]) -> str | None:
    """The scheduler's word on the first pod it could not place."""
    for pod in pods:
        problem = pod_problem(pod)
        if problem and problem.reason == "Unschedulable":
            return problem.message
    return None
