"""The OpenAI API of a language-model ModelDeployment on the local cluster: the front container in the
server pods (for a python-llm and a vLLM model), the Service's `openai` port, status.endpoints.openai and
the NetworkPolicy's port. Turning
it off removes every one of them; turning it back on while the operator is down brings them back once
it is up. After each step the children equal what the builders make of the spec, nothing more."""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.convergence import model_deployment_differences
from e2e.kube import Kubectl, wait_condition, wait_for
from e2e.operator_proc import OperatorProcess
from kubeforge.settings import Settings

pytestmark = pytest.mark.e2e

NAME = "opticks-serving"
LANGUAGE_MODEL = {"name": "opticks", "source": "pvc://models/opticks", "format": "python", "config": {"decoupled": True}}  # fmt: skip
# a vLLM model with an adapter and a chat template of its own: the front finds both in its folder
VLLM_MODEL = {
    "name": "qwen",
    "source": "hf://Qwen/Qwen2.5-0.5B-Instruct",
    "format": "vllm",
    "llm": {
        "loraAdapters": [{"name": "qwen-sql", "source": "pvc://models/adapters/sql"}],
        "chatTemplate": "{% for m in messages %}{{ m.content }}{% endfor %}",
    },
}


def _front(kubectl: Kubectl, namespace: str) -> dict[str, Any]:
    """What the cluster holds of the front: containers, Service ports, policy ports, the endpoint."""
    deployment = kubectl.json("get", "deployment", NAME, namespace=namespace)
    service = kubectl.json("get", "service", NAME, namespace=namespace)
    found = kubectl("get", "networkpolicy", NAME, "-o", "json", namespace=namespace, check=False)
    policy = json.loads(found.stdout) if found.returncode == 0 else {}
    md = kubectl.json("get", "md", NAME, namespace=namespace)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return {
        "containers": [c["name"] for c in containers],
        "served": [
            arg
            for c in containers
            if c["name"] == "openai"
            for arg in c["args"][c["args"].index("--model") :]
        ],
        "service": {p["name"]: p["port"] for p in service["spec"]["ports"]},
        "policy": [
            p["port"] for p in ((policy.get("spec") or {}).get("ingress") or [{}])[0].get("ports", [])
        ],
        "endpoint": ((md.get("status") or {}).get("endpoints") or {}).get("openai"),
        "generation": md["metadata"]["generation"],
        "observed": (md.get("status") or {}).get("observedGeneration"),
    }


def _settled(kubectl: Kubectl, namespace: str, settings: Settings, on: bool, step: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        front = _front(kubectl, namespace)
        if front["observed"] != front["generation"] or ("openai" in front["containers"]) != on:
            return None
        return front if model_deployment_differences(kubectl, NAME, namespace, settings) == [] else None

    front: dict[str, Any] = wait_for(done, timeout=60, message=f"{step}: the children of the current spec")
    return front


def test_the_openai_api_is_on_the_service_and_turns_off_and_on_across_a_restart(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, models_claim: str
) -> None:
    own_operator.start()
    settings = Settings.from_env()
    body = {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {"models": [LANGUAGE_MODEL, VLLM_MODEL], "replicas": 1, "gpu": {"count": 1}},
    }
    kubectl.apply(json.dumps(body))
    wait_condition(kubectl, "md", NAME, "Ready", namespace=namespace, timeout=90)
    on = _settled(kubectl, namespace, settings, True, "created")
    assert on["containers"] == ["triton", "openai"]
    assert on["served"] == ["--model", "opticks", "--model", "qwen"]
    assert on["service"]["openai"] == 9000
    assert on["endpoint"] == f"http://{NAME}.{namespace}.svc.cluster.local:9000/v1"
    if settings.network_policies:
        assert on["policy"] == [8000, 8001, 9000]

    kubectl("patch", "md", NAME, "--type=merge", "-p", json.dumps({"spec": {"openai": {"enabled": False}}}), namespace=namespace)  # fmt: skip
    off = _settled(kubectl, namespace, settings, False, "turned off")
    assert off["containers"] == ["triton"] and "openai" not in off["service"] and off["endpoint"] is None
    assert 9000 not in off["policy"]

    own_operator.stop()  # the edit lands while no operator runs
    kubectl("patch", "md", NAME, "--type=merge", "-p", json.dumps({"spec": {"openai": None}}), namespace=namespace)  # fmt: skip
    own_operator.start()
    back = _settled(kubectl, namespace, settings, True, "back on after a restart")
    assert back["containers"] == ["triton", "openai"] and back["service"]["openai"] == 9000
    wait_condition(kubectl, "md", NAME, "Ready", namespace=namespace, timeout=90)
