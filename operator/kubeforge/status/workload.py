"""The serving workload of a ModelDeployment, reduced to what its status says (pure).

A Deployment's own status counts its pods; a LeaderWorkerSet's groups are counted from their pods
(status/leaderworkerset.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubeforge.status.leaderworkerset import count_groups


@dataclass(frozen=True)
class Workload:
    """The serving workload (a Deployment, or a LeaderWorkerSet's groups) reduced to what status says.

    `replicas` are Triton servers: pods of a Deployment, groups of a LeaderWorkerSet.
    """

    name: str  # "the Triton Deployment" / "the LeaderWorkerSet"
    exists: bool
    replicas: int
    ready: int
    updated: int
    rolled_out: bool
    deadline: str | None = None  # the Deployment's ProgressDeadlineExceeded message
    recreating: str | None = None  # a group being recreated after one of its pods failed
    # the ReplicaSet could not create pods (a ResourceQuota, a LimitRange, an admission policy)
    replica_failure: str | None = None


def deployment_workload(dep: dict[str, Any] | None, desired: int) -> Workload:
    dep_status = (dep or {}).get("status", {})
    replicas = int(dep_status.get("replicas", 0) or 0)
    ready = int(dep_status.get("readyReplicas", 0) or 0) if dep else 0
    updated = int(dep_status.get("updatedReplicas", 0) or 0)
    current = dep is not None and int(dep_status.get("observedGeneration", 0) or 0) >= int(
        dep["metadata"].get("generation", 0) or 0
    )
    progress = _condition(dep, "Progressing") if dep else None
    refused = _condition(dep, "ReplicaFailure") if dep else None
    return Workload(
        name="the Triton Deployment",
        exists=dep is not None,
        replicas=replicas,
        ready=ready,
        updated=updated,
        rolled_out=current and updated >= desired and replicas == desired and ready >= desired,
        deadline=(
            str(progress.get("message", ""))
            if progress and progress.get("reason") == "ProgressDeadlineExceeded"
            else None
        ),
        replica_failure=(
            str(refused.get("message") or refused.get("reason") or "FailedCreate")
            if refused and refused.get("status") == "True"
            else None
        ),
    )


def leaderworkerset_workload(
    lws: dict[str, Any] | None, pods: list[dict[str, Any]], desired: int
) -> Workload:
    groups = count_groups(lws, pods, desired)
    return Workload(
        name="the LeaderWorkerSet",
        exists=lws is not None,
        replicas=groups.groups,
        ready=groups.ready,
        updated=groups.updated,
        rolled_out=(
            lws is not None
            and groups.updated_ready >= desired
            and groups.groups == desired
            and groups.recreating is None
        ),
        recreating=groups.recreating,
    )


def _condition(deployment: dict[str, Any], type_: str) -> dict[str, Any] | None:
    conditions = deployment.get("status", {}).get("conditions") or []
    return next((c for c in conditions if c.get("type") == type_), None)
