"""The real LeaderWorkerSet controller on the local cluster: one group of 2 pods x 8 H100.

A smoke test of the controller and its webhooks themselves (e2e/lws.py), before the operator
renders LeaderWorkerSets of its own: what it writes (labels, LWS_* env, the headless Service,
status) is what the operator builds on.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from e2e.kube import Kubectl, find_condition, wait_for
from e2e.lws import LWS_API, LeaderWorkerSetController
from e2e.nodes import GPU_TOLERATION, H100_80GB

pytestmark = pytest.mark.e2e
NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
GROUP_INDEX = "leaderworkerset.sigs.k8s.io/group-index"


def _leaderworkerset(name: str) -> dict[str, Any]:
    pod = {
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": H100_80GB},
            "tolerations": [GPU_TOLERATION],
            "containers": [
                {
                    "name": "engine",
                    "image": "registry.invalid/engine:1",
                    "resources": {"limits": {"nvidia.com/gpu": "8"}},
                }
            ],
        }
    }
    return {
        "apiVersion": LWS_API,
        "kind": "LeaderWorkerSet",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "leaderWorkerTemplate": {
                "size": 2,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "workerTemplate": pod,
            },
        },
    }


def test_a_group_of_two_8_gpu_pods_lands_on_two_h100_nodes_and_is_ready(
    kubectl: Kubectl, namespace: str, lws: LeaderWorkerSetController
) -> None:
    kubectl.apply(json.dumps(_leaderworkerset("smoke")), namespace=namespace)

    def group_ready() -> list[dict[str, Any]] | None:
        pods = kubectl.json("get", "pods", "-l", f"{NAME_LABEL}=smoke", namespace=namespace)["items"]
        ready = [p for p in pods if (find_condition(p, "Ready") or {}).get("status") == "True"]
        return pods if len(pods) == 2 and len(ready) == 2 else None

    pods = wait_for(group_ready, timeout=90, message="the leader and its worker Ready")
    by_index = {p["metadata"]["labels"][WORKER_INDEX]: p for p in pods}
    assert sorted(by_index) == ["0", "1"]  # the pod webhook labelled them
    assert {p["metadata"]["labels"][GROUP_INDEX] for p in pods} == {"0"}
    nodes = [p["spec"]["nodeName"] for p in pods]
    assert len(set(nodes)) == 2, nodes
    for node in nodes:
        labels = kubectl.json("get", "node", node)["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == H100_80GB

    env = {e["name"]: e.get("value") for e in by_index["1"]["spec"]["containers"][0].get("env", [])}
    # <leader pod>.<LeaderWorkerSet> (its headless Service).<namespace>
    assert env["LWS_LEADER_ADDRESS"] == f"{by_index['0']['metadata']['name']}.smoke.{namespace}"
    assert env["LWS_GROUP_SIZE"] == "2" and env["LWS_WORKER_INDEX"] == "1"
    service = kubectl.json("get", "service", "smoke", namespace=namespace)
    assert service["spec"]["clusterIP"] == "None"  # LWS's own headless Service for the group

    def lws_ready() -> dict[str, Any] | None:
        obj: dict[str, Any] = kubectl.json("get", "leaderworkerset", "smoke", namespace=namespace)
        status = obj.get("status") or {}
        available = find_condition(obj, "Available") or {}
        return obj if status.get("readyReplicas") == 1 and available.get("status") == "True" else None

    obj = wait_for(lws_ready, timeout=60, message="LeaderWorkerSet readyReplicas 1 and Available")
    # what the webhook defaulted
    assert obj["spec"]["rolloutStrategy"]["type"] == "RollingUpdate"
    assert obj["spec"]["networkConfig"]["subdomainPolicy"] == "Shared"
    assert obj["status"]["replicas"] == 1
