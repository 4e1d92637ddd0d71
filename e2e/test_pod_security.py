"""Every example runs in a namespace that enforces the `restricted` Pod Security Standard, as
kube-apiserver's own PodSecurity admission judges it: serving, the model cache's fill, the
multi-node LLM (a LeaderWorkerSet), training and train -> serve.

A pod the level forbids is refused at creation (the ReplicaSet's, Job's or StatefulSet's
FailedCreate Event says `violates PodSecurity "restricted:latest"`), so its owner never reaches its
goal; the test asserts both that every example reaches it and that no such refusal happened.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import yaml

from e2e.cluster import REPO_ROOT
from e2e.dev import _claims_without_volume, _operator_claims, finish_job_pods
from e2e.kube import Kubectl, fresh_namespace, wait_for
from e2e.lws import LeaderWorkerSetController
from e2e.operator_proc import OperatorProcess
from e2e.storage import bound_claim, volume_for_claim

pytestmark = pytest.mark.e2e
EXAMPLES = REPO_ROOT / "examples"
GOAL = {"ModelDeployment": "Ready", "TrainingJob": "Succeeded"}


def _examples(namespace: str) -> list[dict[str, Any]]:
    docs = [d for path in sorted(EXAMPLES.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
    return docs


def test_every_example_runs_under_restricted_pod_security(
    kubectl: Kubectl, operator: OperatorProcess, lws: LeaderWorkerSetController
) -> None:
    namespace = f"e2e-restricted-{uuid.uuid4().hex[:5]}"
    with fresh_namespace(kubectl, namespace):
        kubectl(
            "label",
            "namespace",
            namespace,
            "pod-security.kubernetes.io/enforce=restricted",
            "pod-security.kubernetes.io/enforce-version=latest",
        )
        # the admission is real and on: a pod the level forbids is refused with its reason
        forbidden = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "privileged", "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": True}}]},
        }
        refusal = kubectl("apply", "-f", "-", input=yaml.safe_dump(forbidden), check=False)
        assert refusal.returncode != 0 and 'violates PodSecurity "restricted:latest"' in refusal.stderr

        docs = _examples(namespace)
        for _, claim in sorted(_claims_without_volume(docs)):
            bound_claim(kubectl, namespace, claim, size="100Gi")
        for _, claim in sorted(_operator_claims(docs)):
            volume_for_claim(kubectl, namespace, claim, size="200Gi")
        kubectl.apply(yaml.safe_dump_all(docs))
        applied = {(d["kind"], d["metadata"]["name"]) for d in docs if d["kind"] in GOAL}

        def at_goal() -> list[str] | None:
            finish_job_pods(kubectl, "2s", namespace)
            objects = kubectl.json("get", "modeldeployments,trainingjobs", namespace=namespace)["items"]
            names = {(o["kind"], o["metadata"]["name"]) for o in objects}
            missing = applied - names
            behind = [
                f"{o['kind']} {o['metadata']['name']}: {(o.get('status') or {}).get('phase')}"
                for o in objects
                if (o.get("status") or {}).get("phase") != GOAL[o["kind"]]
            ]
            if missing or behind:
                at_goal.last = sorted(behind) + [f"{k} {n}: missing" for k, n in sorted(missing)]  # type: ignore[attr-defined]
                return None
            return sorted(f"{o['kind']} {o['metadata']['name']}" for o in objects)

        reached = wait_for(
            at_goal, timeout=240, message=lambda: f"every example at its goal: {getattr(at_goal, 'last', '')}"
        )
        # the hand-off's ModelDeployments are among them, created by the operator in that namespace
        assert len(reached) > len(applied), reached
        time.sleep(1)
        events = kubectl.json("get", "events", namespace=namespace)["items"]
        refused = [e["message"] for e in events if "PodSecurity" in (e.get("message") or "")]
        assert refused == []
