"""What the canary e2e tests ask of one ModelDeployment and its rollout (e2e/test_canary.py,
e2e/test_gateway.py): its manifest and model, its body, status.rollout, its Deployments,
convergence, Ready."""

from __future__ import annotations

import json
from typing import Any

from e2e.convergence import model_deployment_differences
from e2e.kube import Kubectl, find_condition, wait_for
from kubeforge.api.modeldeployment import ModelSpec
from kubeforge.settings import Settings
from kubeforge.testing.workloads import fixed_cost_model

MODEL = "fixed"
ACTION = "kubeforge.io/rollout-action"  # the rollout verbs' annotation: promote, abort, retry


def fixed_model(step_ms: float, error_every: int = 0) -> ModelSpec:
    """The model a canary rolls out: its step time (and, with `error_every` N, a failing Nth execution)
    is all that differs between revisions, so they share one folder on the claim."""
    return fixed_cost_model(MODEL, max_batch_size=0, batching=False, step_ms=step_ms, error_every=error_every)


def manifest(namespace: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "kubeforge.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


def md_body(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    md: dict[str, Any] = kubectl.json("get", "md", name, namespace=namespace)
    return md


def rollout_status(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    rollout: dict[str, Any] = (md_body(kubectl, namespace, name).get("status") or {}).get("rollout") or {}
    return rollout


def wait_rollout(
    kubectl: Kubectl, namespace: str, name: str, what: str, timeout: float = 180, **want: Any
) -> dict[str, Any]:
    """Wait until status.rollout has every field of `want` at its value; returns it."""

    def check() -> dict[str, Any] | None:
        rollout = rollout_status(kubectl, namespace, name)
        return rollout if all(rollout.get(k) == v for k, v in want.items()) else None

    return wait_for(check, timeout=timeout, message=f"{what}: status.rollout with {want}")


def deployment(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any] | None:
    found = kubectl("get", "deployment", name, "-o", "json", namespace=namespace, check=False)
    return json.loads(found.stdout) if found.returncode == 0 else None


def converged(kubectl: Kubectl, namespace: str, name: str) -> None:
    """Wait until the generation is observed and the children are what the builders make of the spec."""

    def check() -> bool:
        md = md_body(kubectl, namespace, name)
        if (md.get("status") or {}).get("observedGeneration") != md["metadata"]["generation"]:
            return False
        return not model_deployment_differences(kubectl, name, namespace, Settings())

    try:
        wait_for(check, timeout=60, message="the children equal what the builders make of the spec")
    except TimeoutError:
        problems = model_deployment_differences(kubectl, name, namespace, Settings())
        raise AssertionError(f"not converged: {problems}") from None


def ready(kubectl: Kubectl, namespace: str, name: str) -> None:
    def check() -> bool:
        condition = find_condition(md_body(kubectl, namespace, name), "Ready")
        return condition is not None and condition["status"] == "True"

    wait_for(check, timeout=60, message="Ready=True")
