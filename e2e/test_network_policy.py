"""Generated workloads are fenced (issue 22, item 2): a NetworkPolicy per ModelDeployment and per
TrainingJob, owned, converging through edits and an operator restart, gone when turned off.

The local cluster enforces no NetworkPolicy (no CNI), so the policies the API server stored are
judged by cyclonus's engine (e2e/netpol.py) on the real pods' labels and namespaces: a table of
(source, destination, port) pairs, each allowed or denied.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.kube import Kubectl, wait_for
from e2e.netpol import Connection, Pod, allowed
from e2e.operator_proc import OperatorProcess
from kubeforge.api import ModelDeployment, TrainingJob
from kubeforge.builders.network import (
    build_model_deployment_network_policy,
    build_training_job_network_policy,
)
from kubeforge.settings import Settings

pytestmark = pytest.mark.e2e
OPERATOR_NS = "kubeforge-system"
HTTP, GRPC, METRICS, RAY, RAY_CLIENT, RENDEZVOUS = 8000, 8001, 8002, 6379, 10001, 29500


def _md(namespace: str, name: str, network: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": 2,
        "models": [{"name": "m", "format": "onnx", "source": "pvc://models/m"}],
    }
    if network is not None:
        spec["network"] = network
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def _tj(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "gang", "namespace": namespace},
        "spec": {"image": "trainer:1", "workers": 2, "resources": {"cpu": "100m", "memory": "128Mi"}},
    }


def _policies(kubectl: Kubectl, namespace: str) -> dict[str, dict[str, Any]]:
    items = kubectl.json("get", "networkpolicies", namespace=namespace)["items"]
    return {p["metadata"]["name"]: p for p in items}


def _pods(kubectl: Kubectl, namespace: str, owner: str, count: int) -> list[Pod]:
    def found() -> list[dict[str, Any]] | None:
        items = kubectl.json("get", "pods", "-l", f"kubeforge.io/owner-name={owner}", namespace=namespace)[
            "items"
        ]
        return items if len(items) >= count else None

    items = wait_for(found, timeout=60, message=f"{count} pods of {owner}")
    return [Pod(namespace, p["metadata"].get("labels") or {}) for p in items]


def _desired(kubectl: Kubectl, namespace: str, settings: Settings) -> dict[str, dict[str, Any]]:
    """What the builders make of the objects as they are now."""
    out: dict[str, dict[str, Any]] = {}
    for item in kubectl.json("get", "md", namespace=namespace)["items"]:
        policy = build_model_deployment_network_policy(ModelDeployment.model_validate(item), settings)
        if policy is not None:
            out[policy["metadata"]["name"]] = policy
    for item in kubectl.json("get", "tj", namespace=namespace)["items"]:
        policy = build_training_job_network_policy(TrainingJob.model_validate(item), settings)
        if policy is not None:
            out[policy["metadata"]["name"]] = policy
    return out


def _converged(kubectl: Kubectl, namespace: str, settings: Settings) -> dict[str, dict[str, Any]]:
    """Wait until the namespace's NetworkPolicies are exactly what the builders make, nothing more."""

    def check() -> dict[str, dict[str, Any]] | None:
        actual, desired = _policies(kubectl, namespace), _desired(kubectl, namespace, settings)
        if set(actual) != set(desired):
            return None
        same = all(
            actual[n]["spec"] == desired[n]["spec"]
            and actual[n]["metadata"]["ownerReferences"] == desired[n]["metadata"]["ownerReferences"]
            for n in desired
        )
        return actual if same else None

    return wait_for(
        check, timeout=60, message=lambda: f"policies {sorted(_policies(kubectl, namespace))} as built"
    )


def test_each_object_is_fenced_by_its_own_policy_through_edits_and_a_restart(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess
) -> None:
    env = {"POD_NAMESPACE": OPERATOR_NS}
    settings = Settings(operator_namespace=OPERATOR_NS)
    own_operator.start(env=env)
    frontend = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "frontend"}}}
    for body in (
        _md(namespace, "guarded", {"allowFrom": [frontend]}),
        _md(namespace, "open", None),
        _tj(namespace),
    ):
        kubectl.apply(json.dumps(body))
    policies = list(_converged(kubectl, namespace, settings).values())
    guarded = _pods(kubectl, namespace, "guarded", 2)
    (open_pod, *_) = _pods(kubectl, namespace, "open", 2)
    workers = _pods(kubectl, namespace, "gang", 2)
    tenant = Pod("other-team", {"app": "anything"})
    front = Pod("frontend", {"app": "web"})
    monitoring = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
    operator = Pod(OPERATOR_NS, {"app.kubernetes.io/name": "kubeforge"})
    neighbour = Pod(namespace, {"app": "not-ours"})  # the same namespace, no owner labels
    outside = Pod(ip="203.0.113.7")

    table = [
        # a ModelDeployment that names who may call it
        (front, guarded[0], HTTP, True),
        (front, guarded[0], GRPC, True),
        (front, guarded[0], METRICS, False),
        (tenant, guarded[0], HTTP, False),
        (neighbour, guarded[0], GRPC, False),
        (outside, guarded[0], HTTP, False),
        (operator, guarded[0], HTTP, True),  # the operator's probe
        (operator, guarded[0], METRICS, True),
        (monitoring, guarded[0], METRICS, True),
        (monitoring, guarded[0], HTTP, False),
        # Ray and NCCL: only the object's own pods
        (guarded[1], guarded[0], RAY, True),
        (guarded[1], guarded[0], RAY_CLIENT, True),
        (open_pod, guarded[0], RAY, False),
        (tenant, guarded[0], RAY_CLIENT, False),
        # a ModelDeployment that says nothing: its inference ports from anyone, the rest fenced
        (tenant, open_pod, HTTP, True),
        (outside, open_pod, GRPC, True),
        (tenant, open_pod, METRICS, False),
        (tenant, open_pod, RAY, False),
        (guarded[0], open_pod, RAY_CLIENT, False),
        # a TrainingJob's gang: its rendezvous and NCCL only from its own workers
        (workers[1], workers[0], RENDEZVOUS, True),
        (workers[0], workers[1], 43117, True),
        (tenant, workers[0], RENDEZVOUS, False),
        (neighbour, workers[0], RENDEZVOUS, False),
        (guarded[0], workers[0], 43117, False),
        (operator, workers[0], RENDEZVOUS, False),
    ]
    verdicts = allowed(policies, [Connection(s, d, port) for s, d, port, _ in table])
    wrong = [
        (s, d, port, want) for (s, d, port, want), got in zip(table, verdicts, strict=True) if got != want
    ]
    assert wrong == []

    # day 2: the guarded one opens up (network removed), the open one narrows (network added), with
    # the operator stopped in between; after its restart the policies are what the specs make
    own_operator.stop()
    kubectl(
        "patch",
        "md",
        "guarded",
        "--type=json",
        "-p",
        '[{"op": "remove", "path": "/spec/network"}]',
        namespace=namespace,
    )
    kubectl(
        "patch",
        "md",
        "open",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"network": {"allowFrom": []}}}),
        namespace=namespace,
    )
    own_operator.start(env=env)
    policies = list(_converged(kubectl, namespace, settings).values())
    table = [
        (tenant, guarded[0], HTTP, True),
        (tenant, guarded[0], RAY, False),
        (tenant, open_pod, HTTP, False),  # [] admits nobody else
        (operator, open_pod, HTTP, True),
        (front, open_pod, GRPC, False),
    ]
    verdicts = allowed(policies, [Connection(s, d, port) for s, d, port, _ in table])
    assert verdicts == [want for *_, want in table]

    # turned off (the chart's workloadNetworkPolicy.enabled: false): every policy goes; on again: back
    own_operator.stop()
    own_operator.start(env={**env, "KUBEFORGE_NETWORK_POLICIES": "false"})
    wait_for(lambda: not _policies(kubectl, namespace), timeout=60, message="no policy once turned off")
    own_operator.stop()
    own_operator.start(env=env)
    _converged(kubectl, namespace, settings)

    # owned: deleting an object takes its policy with it (the garbage collector)
    kubectl("delete", "md", "guarded", "--wait=true", namespace=namespace)
    wait_for(
        lambda: "guarded" not in _policies(kubectl, namespace), timeout=60, message="the policy collected"
    )
    assert set(_policies(kubectl, namespace)) == {"open", "gang-workers"}
