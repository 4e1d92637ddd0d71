"""The kstatus CLI and its wrapper give Flux's verdicts on hand-made objects (no cluster needed).

These pin the library rules that our conditions are designed against (cli-utils v0.37.2,
pkg/kstatus/status): deletionTimestamp, then generation vs observedGeneration, then the first
of Reconciling=True / Stalled=True in the list, then (custom kinds only) Ready, else Current.
"""

from __future__ import annotations

from typing import Any

import pytest

from e2e.kstatus import KStatusError, compute, compute_many
from tests.chart import test_argocd_health as argocd

pytestmark = pytest.mark.e2e


def condition(type_: str, status: str, reason: str = "Test", message: str = "") -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message or f"{type_} is {status}"}


def model_deployment(
    conditions: list[dict[str, Any]] | None = None, generation: int = 2, observed: int | None = 2
) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": conditions or []}
    if observed is not None:
        status["observedGeneration"] = observed
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "resnet50", "namespace": "team-a", "generation": generation},
        "spec": {"replicas": 1},
        "status": status,
    }


def deployment(replicas: int, updated: int, ready: int) -> dict[str, Any]:
    progress = "ReplicaSetUpdated" if updated < replicas else "NewReplicaSetAvailable"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "resnet50", "namespace": "team-a", "generation": 3},
        "spec": {"replicas": replicas, "progressDeadlineSeconds": 600},
        "status": {
            "observedGeneration": 3,
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "conditions": [
                condition("Available", "True", "MinimumReplicasAvailable"),
                condition("Progressing", "True", progress),
            ],
        },
    }


def test_deployment_rolling_out_is_in_progress() -> None:
    verdict = compute(deployment(replicas=3, updated=1, ready=3))
    assert (verdict.status, verdict.message) == ("InProgress", "Updated: 1/3")
    assert (verdict.kind, verdict.name, verdict.namespace) == ("Deployment", "resnet50", "team-a")


def test_deployment_rolled_out_is_current() -> None:
    assert compute(deployment(replicas=3, updated=3, ready=3)).status == "Current"


def test_observed_generation_behind_is_in_progress_whatever_the_conditions() -> None:
    verdict = compute(model_deployment([condition("Ready", "True")], generation=3, observed=2))
    assert verdict.status == "InProgress"
    assert verdict.message == "ModelDeployment generation is 3, but latest observed generation is 2"


def test_reconciling_true_is_in_progress() -> None:
    verdict = compute(
        model_deployment(
            [condition("Ready", "False"), condition("Reconciling", "True", message="rolling out")]
        )
    )
    assert (verdict.status, verdict.message) == ("InProgress", "rolling out")


def test_stalled_true_is_failed_with_its_message() -> None:
    stalled = condition("Stalled", "True", "Unschedulable", "0/4 nodes have 16 nvidia.com/gpu")
    verdict = compute(
        model_deployment([condition("Ready", "False"), condition("Reconciling", "False"), stalled])
    )
    assert (verdict.status, verdict.message) == ("Failed", "0/4 nodes have 16 nvidia.com/gpu")


def test_neither_reconciling_nor_stalled_is_current() -> None:
    quiet = [condition("Reconciling", "False"), condition("Stalled", "False")]
    assert compute(model_deployment([condition("Ready", "True"), *quiet])).status == "Current"
    assert compute(model_deployment(quiet)).status == "Current"
    # No status at all (an object the operator has not seen yet) is Current too: kstatus
    # cannot tell it from a kind without status, so the operator must write status first thing.
    assert compute(model_deployment(observed=None)).status == "Current"


def test_ready_false_alone_is_in_progress_never_failed() -> None:
    verdict = compute(model_deployment([condition("Ready", "False", message="waiting")]))
    assert (verdict.status, verdict.message) == ("InProgress", "waiting")


def test_first_abnormal_condition_in_the_list_wins() -> None:
    reconciling, stalled = condition("Reconciling", "True"), condition("Stalled", "True")
    assert compute(model_deployment([reconciling, stalled])).status == "InProgress"
    assert compute(model_deployment([stalled, reconciling])).status == "Failed"


def test_deletion_timestamp_comes_first() -> None:
    obj = model_deployment([condition("Stalled", "True")], generation=3, observed=2)
    obj["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert compute(obj).status == "Terminating"


def test_compute_many_keeps_the_order() -> None:
    verdicts = compute_many(
        [model_deployment([condition("Stalled", "True")]), deployment(2, 1, 1), model_deployment()]
    )
    assert [v.status for v in verdicts] == ["Failed", "InProgress", "Current"]
    assert compute_many([]) == []


def test_malformed_object_raises() -> None:
    obj = model_deployment()
    obj["status"]["conditions"] = "Ready"
    with pytest.raises(KStatusError, match="ModelDeployment resnet50"):
        compute(obj)


@pytest.mark.parametrize("kind", sorted(argocd.CASES))
def test_kstatus_gives_the_verdicts_of_the_argocd_table(kind: str) -> None:
    """tests/chart/test_argocd_health.py's kstatus column is what the real library computes."""
    cases = {name: case for name, case in argocd.CASES[kind].items() if case.kstatus is not None}
    verdicts = compute_many([case.obj for case in cases.values()])
    got = {name: verdict.status for name, verdict in zip(cases, verdicts, strict=True)}
    assert got == {name: case.kstatus for name, case in cases.items()}
