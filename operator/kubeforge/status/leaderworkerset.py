"""Count a multi-node ModelDeployment's replicas: LeaderWorkerSet groups, from their pods (pure).

A group is its pods with one `leaderworkerset.sigs.k8s.io/group-index`. It is ready when all of
its `size` pods are Ready, and up to date when all of them carry the template hash of the
LeaderWorkerSet as last applied (builders/leaderworkerset.py): a group of mixed revisions is not
up to date. The pods are the truth rather than the LeaderWorkerSet's status, which has no
observedGeneration: right after a change it still describes the previous templates.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from kubeforge.builders.leaderworkerset import (
    GROUP_INDEX_LABEL,
    LEADER_INDEX,
    TEMPLATE_HASH_ANNOTATION,
    WORKER_INDEX_LABEL,
    template_hash,
)
from kubeforge.status.pods import pod_ready

Pod = dict[str, Any]


@dataclass(frozen=True)
class Groups:
    """The groups of one LeaderWorkerSet as its pods show them."""

    size: int  # pods per group
    groups: int  # groups that have a leader pod (what /scale reports as replicas)
    ready: int  # groups with all `size` pods Ready
    updated: int  # groups whose `size` pods all run the current templates
    updated_ready: int  # both
    surplus: int  # groups at an index >= the desired count, still there (a scale-down under way)
    # why a group is being recreated (one of its pods restarted or was deleted), or None
    recreating: str | None = None


def _labels(pod: Pod) -> dict[str, str]:
    return pod["metadata"].get("labels") or {}


def _hash(pod: Pod) -> str | None:
    return (pod["metadata"].get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION)


def _group(pod: Pod) -> int | None:
    value = _labels(pod).get(GROUP_INDEX_LABEL)
    return int(value) if value is not None and value.isdigit() else None


def _restart(pod: Pod) -> str | None:
    """A container of the pod that has restarted, in words, or None."""
    status = pod.get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        if int(cs.get("restartCount") or 0) > 0:
            last = (cs.get("lastState") or {}).get("terminated") or {}
            detail = ", ".join(
                str(x)
                for x in (f"exit code {last['exitCode']}" if "exitCode" in last else None, last.get("reason"))
                if x
            )
            return f"container {cs.get('name')} restarted" + (f" ({detail})" if detail else "")
    return None


def _recreating(pods: list[Pod], current: str | None, desired: int) -> str | None:
    """Why a group of the current templates is being recreated: LWS's RecreateGroupOnPodRestart
    deletes a group's leader (and so all of it) when any of its pods restarts or is deleted.
    Pods of older templates being replaced (a rolling update) and groups being scaled away are not
    recreations."""
    candidates = [p for p in pods if _hash(p) == current and (_group(p) or 0) < desired]
    for pod in sorted(
        candidates, key=lambda p: (_labels(p).get(WORKER_INDEX_LABEL) == LEADER_INDEX, p["metadata"]["name"])
    ):
        restart = _restart(pod)
        if restart:
            return f"group {_group(pod)} is being recreated: pod {pod['metadata']['name']}: {restart}"
    for pod in candidates:
        if pod["metadata"].get("deletionTimestamp"):
            return f"group {_group(pod)} is being recreated: pod {pod['metadata']['name']} is being deleted"
    return None


def count_groups(lws: dict[str, Any] | None, pods: list[Pod], desired: int) -> Groups:
    """The groups of `lws` (None: not created yet) from the pods of the ModelDeployment."""
    if lws is None:
        return Groups(size=0, groups=0, ready=0, updated=0, updated_ready=0, surplus=0)
    size = int(lws.get("spec", {}).get("leaderWorkerTemplate", {}).get("size") or 1)
    current = template_hash(lws)
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp") and _group(p) is not None]
    by_group: dict[int, list[Pod]] = defaultdict(list)
    for pod in live:
        group = _group(pod)
        assert group is not None
        by_group[group].append(pod)
    led = {
        g: members
        for g, members in by_group.items()
        if any(_labels(p).get(WORKER_INDEX_LABEL) == LEADER_INDEX for p in members)
    }
    ready = {g for g, members in led.items() if len(members) >= size and all(pod_ready(p) for p in members)}
    updated = {
        g for g, members in led.items() if len(members) >= size and all(_hash(p) == current for p in members)
    }
    return Groups(
        size=size,
        groups=len(led),
        ready=len(ready),
        updated=len(updated),
        updated_ready=len(ready & updated),
        surplus=sum(1 for g in led if g >= desired),
        recreating=_recreating(pods, current, desired),
    )
