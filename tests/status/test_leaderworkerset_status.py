"""A multi-node ModelDeployment's status: replicas are LeaderWorkerSet groups, counted from their pods."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from kubeforge.api import ModelDeployment
from kubeforge.status.conditions import get_condition
from kubeforge.status.gitops import ReconcileFailure
from kubeforge.status.leaderworkerset import count_groups
from kubeforge.status.modeldeployment import Observed, compute_status
from tests.data.invalid_specs import example

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
CURRENT, OLD = "new-hash", "old-hash"


def _md(replicas: int = 1) -> ModelDeployment:
    doc = copy.deepcopy(example("llm-multinode.yaml"))
    doc["metadata"].update(uid="u", generation=3, namespace="ns")
    doc["spec"]["replicas"] = replicas
    return ModelDeployment.model_validate(doc)


def _lws(replicas: int = 1, size: int = 2, digest: str = CURRENT) -> dict[str, Any]:
    annotations = {"kubeforge.io/template-hash": digest}
    return {
        "metadata": {"name": "llama-405b-lws", "generation": 1},
        "spec": {
            "replicas": replicas,
            "leaderWorkerTemplate": {
                "size": size,
                "leaderTemplate": {"metadata": {"annotations": annotations}},
                "workerTemplate": {"metadata": {"annotations": annotations}},
            },
        },
        # stale on purpose: the pods are what counts
        "status": {"replicas": replicas, "readyReplicas": replicas, "updatedReplicas": replicas},
    }


def _pod(
    group: int,
    worker: int,
    ready: bool = True,
    digest: str = CURRENT,
    deleting: bool = False,
    restarts: int = 0,
) -> dict[str, Any]:
    name = f"llama-405b-lws-{group}" + (f"-{worker}" if worker else "")
    meta: dict[str, Any] = {
        "name": name,
        "labels": {
            "kubeforge.io/owner-kind": "modeldeployment",
            "kubeforge.io/owner-name": "llama-405b",
            "leaderworkerset.sigs.k8s.io/group-index": str(group),
            "leaderworkerset.sigs.k8s.io/worker-index": str(worker),
        },
        "annotations": {"kubeforge.io/template-hash": digest},
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-11-29T09:59:59Z"
    status: dict[str, Any] = {
        "podIP": f"10.0.{group}.{worker}",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        "containerStatuses": [
            {
                "name": "engine-worker" if worker else "triton",
                "restartCount": restarts,
                **({"lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}} if restarts else {}),
            }
        ],
    }
    return {"metadata": meta, "status": status}


def _group(index: int, **kw: Any) -> list[dict[str, Any]]:
    return [_pod(index, 0, **kw), _pod(index, 1, **kw)]


def _status(md: ModelDeployment, lws: dict[str, Any] | None, pods: list[dict[str, Any]], **kw: Any) -> Any:
    observed = Observed(
        deployment=None,
        leaderworkerset=lws,
        pods=pods,
        endpoints={"http": "h", "grpc": "g", "metrics": "m"},
        **kw,
    )
    return compute_status(md, observed, None, NOW)


def _condition(status: Any, type_: str) -> tuple[str, str, str]:
    c = get_condition(status.conditions, type_)
    assert c is not None
    return c.status, c.reason, c.message


def test_a_whole_ready_group_is_one_ready_replica() -> None:
    status, transitions = _status(_md(), _lws(), _group(0))
    assert status.phase == "Ready"
    assert (status.replicas, status.ready_replicas, status.ready) == (1, 1, "1/1")
    assert _condition(status, "Ready") == (
        "True",
        "AllReplicasReady",
        "1/1 groups ready with all models loaded",
    )
    assert _condition(status, "Available") == ("True", "ReplicasReady", "1/1 groups ready")
    # /scale and the HPA count leaders: one per group, the pods that run Triton
    assert status.selector.endswith(",leaderworkerset.sigs.k8s.io/worker-index=0")
    assert [t.reason for t in transitions] == ["AllReplicasReady"]


@pytest.mark.parametrize(
    ("pods", "counts"),
    [
        (_group(0), (1, 1, 1, 1)),
        ([_pod(0, 0)], (1, 0, 0, 0)),  # the worker not created yet: not a whole group
        ([_pod(0, 1)], (0, 0, 0, 0)),  # no leader, no group
        ([_pod(0, 0), _pod(0, 1, ready=False)], (1, 0, 1, 0)),
        ([_pod(0, 0), _pod(0, 1, digest=OLD)], (1, 1, 0, 0)),  # mixed revisions: not up to date
        ([*_group(0), *_group(1, digest=OLD)], (2, 2, 1, 1)),
    ],
)
def test_groups_are_counted_from_their_pods(
    pods: list[dict[str, Any]], counts: tuple[int, int, int, int]
) -> None:
    groups = count_groups(_lws(replicas=2), pods, desired=2)
    assert (groups.groups, groups.ready, groups.updated, groups.updated_ready) == counts


def test_a_group_of_mixed_revisions_is_rolling_out_not_ready() -> None:
    status, _ = _status(_md(), _lws(), [_pod(0, 0), _pod(0, 1, digest=OLD)])
    assert status.phase == "Progressing"
    assert _condition(status, "Progressing") == ("True", "RollingOut", "0/1 updated, 1/1 ready")
    assert _condition(status, "Ready")[:2] == ("False", "NotAllReplicasReady")
    assert _condition(status, "Available")[0] == "True"  # the old group still serves


def test_old_pods_going_away_in_a_rollout_are_no_recreation() -> None:
    pods = [_pod(0, 0, digest=OLD, deleting=True), _pod(0, 1, digest=OLD, deleting=True)]
    status, _ = _status(_md(), _lws(), pods)
    assert _condition(status, "Progressing")[1] == "RollingOut"


@pytest.mark.parametrize(
    ("pods", "message"),
    [
        (
            [_pod(0, 0), _pod(0, 1, ready=False, restarts=1)],
            "group 0 is being recreated: pod llama-405b-lws-0-1: container engine-worker restarted "
            "(exit code 1, Error)",
        ),
        (
            [_pod(0, 0, deleting=True), _pod(0, 1, deleting=True, restarts=1)],
            "group 0 is being recreated: pod llama-405b-lws-0-1: container engine-worker restarted "
            "(exit code 1, Error)",
        ),
        (
            [_pod(0, 0, deleting=True), _pod(0, 1)],
            "group 0 is being recreated: pod llama-405b-lws-0 is being deleted",
        ),
    ],
)
def test_a_failed_pod_recreating_its_group_is_named(pods: list[dict[str, Any]], message: str) -> None:
    status, _ = _status(_md(), _lws(), pods)
    assert _condition(status, "Progressing") == ("True", "GroupRecreating", message)
    assert _condition(status, "Ready") == ("False", "GroupRecreating", message)
    assert status.phase == "Progressing"
    assert _condition(status, "Reconciling")[:2] == ("True", "GroupRecreating")


def test_scaling_adds_groups() -> None:
    status, _ = _status(_md(replicas=2), _lws(replicas=2), [*_group(0), _pod(1, 0, ready=False)])
    assert (status.replicas, status.ready_replicas, status.ready) == (2, 1, "1/2")
    assert _condition(status, "Ready") == ("False", "NotAllReplicasReady", "1/2 groups ready")
    status, _ = _status(_md(replicas=2), _lws(replicas=2), [*_group(0), *_group(1)])
    assert status.phase == "Ready" and status.ready == "2/2"


def test_a_group_still_there_after_a_scale_down_is_not_rolled_out() -> None:
    status, _ = _status(_md(replicas=1), _lws(replicas=1), [*_group(0), *_group(1)])
    assert _condition(status, "Ready")[0] == "False"


def test_no_leaderworkerset_yet_is_creating() -> None:
    status, _ = _status(_md(), None, [])
    assert status.phase == "Pending"
    assert _condition(status, "Progressing") == ("True", "Creating", "creating the LeaderWorkerSet")
    assert _condition(status, "Available") == ("False", "Creating", "the LeaderWorkerSet has no status yet")


def test_leaderworkerset_not_installed_is_failed_and_stalled() -> None:
    failure = ReconcileFailure("LeaderWorkerSetNotInstalled", "install LeaderWorkerSet")
    status, transitions = _status(_md(), None, [], failure=failure)
    assert status.phase == "Failed"
    assert _condition(status, "Ready") == ("False", "LeaderWorkerSetNotInstalled", "install LeaderWorkerSet")
    assert _condition(status, "Stalled") == ("True", "LeaderWorkerSetNotInstalled", "install LeaderWorkerSet")
    assert [(t.type, t.reason) for t in transitions] == [("Warning", "LeaderWorkerSetNotInstalled")]
