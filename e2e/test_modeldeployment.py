"""ModelDeployment against the real control plane: children, placement, status, scale, rollout, GC."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.kube import Kubectl, find_condition, wait_condition, wait_for

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "model-deployment.yaml"


def _example(namespace: str, **spec: Any) -> str:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["namespace"] = namespace
    for key, value in spec.items():
        if value is None:
            doc["spec"].pop(key, None)
        else:
            doc["spec"][key] = value
    return json.dumps(doc)


def _pods(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    selector = f"kubeforge.io/owner-name={name},kubeforge.io/owner-kind=modeldeployment"
    items: list[dict[str, Any]] = kubectl.json("get", "pods", "-l", selector, namespace=namespace)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def test_example_becomes_ready_with_its_children(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(_example(namespace))
    md = wait_condition(kubectl, "md", "resnet50", "Ready", "True", namespace=namespace, timeout=60)
    status = md["status"]
    assert status["phase"] == "Ready"
    assert status["observedGeneration"] == md["metadata"]["generation"]
    assert status["endpoints"]["http"] == f"http://resnet50.{namespace}.svc.cluster.local:8000"
    assert (status["readyReplicas"], status["ready"]) == (1, "1/1")

    dep = kubectl.json("get", "deployment", "resnet50", namespace=namespace)
    assert dep["metadata"]["ownerReferences"][0]["uid"] == md["metadata"]["uid"]
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    triton = dep["spec"]["template"]["spec"]["containers"][0]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert "--strict-readiness=true" in triton["args"]
    svc = kubectl.json("get", "service", "resnet50", namespace=namespace)
    assert [p["port"] for p in svc["spec"]["ports"]] == [8000, 8001, 8002]
    hpa = kubectl.json("get", "hpa", "resnet50", namespace=namespace)
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "ModelDeployment"

    for pod in _pods(kubectl, namespace, "resnet50"):
        node = kubectl.json("get", "node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"

    # printer columns: Phase, Ready, Model, GPU
    row = kubectl("get", "md", "resnet50", "--no-headers", namespace=namespace).stdout.split()
    assert row[1:5] == ["Ready", "1/1", "resnet50", "1x"]


def test_hpa_is_accepted_and_reports_through_status(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(_example(namespace))

    def hpa_reported() -> dict[str, Any] | None:
        md = kubectl.json("get", "md", "resnet50", namespace=namespace)
        condition = find_condition(md, "AutoscalingReady")
        # a custom metrics API registered by an earlier test may still be cached as served for a moment
        return condition if condition and condition["reason"] == "MetricsApiNotServed" else None

    condition = wait_for(hpa_reported, timeout=90, message="AutoscalingReady=False/MetricsApiNotServed")

    def hpa_conditions() -> dict[str, Any] | None:
        hpa: dict[str, Any] = kubectl.json("get", "hpa", "resnet50", namespace=namespace)
        ready = find_condition(hpa, "AbleToScale") and find_condition(hpa, "ScalingActive")
        return hpa if ready else None

    hpa = wait_for(hpa_conditions, timeout=90, message="the HPA controller's own conditions")
    able = find_condition(hpa, "AbleToScale")
    # the real controller-manager found the ModelDeployment's /scale ...
    assert able is not None and able["status"] == "True", hpa["status"]
    # ... and, with no metrics API here, cannot read the metric; the status says what to install
    active = find_condition(hpa, "ScalingActive")
    assert active is not None and active["status"] == "False"
    assert (condition["status"], condition["reason"]) == ("False", "MetricsApiNotServed")
    assert "prometheus-adapter" in condition["message"]


def test_kubectl_scale_without_autoscaling(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(_example(namespace, autoscaling=None))
    wait_condition(kubectl, "md", "resnet50", "Ready", "True", namespace=namespace, timeout=60)
    kubectl("scale", "md/resnet50", "--replicas=3", namespace=namespace)
    md = wait_for(
        lambda: (
            (m := kubectl.json("get", "md", "resnet50", namespace=namespace))["status"].get("readyReplicas")
            == 3
            and m
        ),
        timeout=60,
        message="3 ready replicas",
    )
    assert md["status"]["replicas"] == 3
    assert kubectl.json("get", "deployment", "resnet50", namespace=namespace)["spec"]["replicas"] == 3
    pdb = kubectl.json("get", "pdb", "resnet50", namespace=namespace)
    assert pdb["spec"]["maxUnavailable"] == 1
    # HPA gone when autoscaling is off
    assert kubectl("get", "hpa", "resnet50", namespace=namespace, check=False).returncode != 0


def test_image_change_rolls_with_max_surge_zero(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(_example(namespace, autoscaling=None, replicas=2))
    wait_condition(kubectl, "md", "resnet50", "Ready", "True", namespace=namespace, timeout=60)
    kubectl(
        "patch",
        "md",
        "resnet50",
        "--type=merge",
        "-p",
        '{"spec":{"runtime":{"image":"nvcr.io/nvidia/tritonserver:25.11-py3"}}}',
        namespace=namespace,
    )

    def rolled() -> bool:
        pods = _pods(kubectl, namespace, "resnet50")
        images = {p["spec"]["containers"][0]["image"] for p in pods}
        # maxSurge 0: never more pods than replicas, even mid-rollout (GPUs would run out)
        assert len(pods) <= 2, [p["metadata"]["name"] for p in pods]
        return images == {"nvcr.io/nvidia/tritonserver:25.11-py3"} and len(pods) == 2

    wait_for(rolled, timeout=90, message="rollout to the new image")
    md = wait_condition(kubectl, "md", "resnet50", "Ready", "True", namespace=namespace, timeout=60)
    assert md["status"]["observedGeneration"] == md["metadata"]["generation"] == 2


def test_too_many_gpus_is_degraded_unschedulable(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(_example(namespace, autoscaling=None, gpu={"count": 16}))
    md = wait_condition(kubectl, "md", "resnet50", "Degraded", "True", namespace=namespace, timeout=60)
    degraded = find_condition(md, "Degraded")
    assert degraded is not None
    assert degraded["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in degraded["message"]
    assert md["status"]["phase"] == "Degraded"
    events = kubectl.json(
        "get",
        "events",
        "--field-selector",
        "involvedObject.name=resnet50,reason=Unschedulable",
        namespace=namespace,
    )
    assert events["items"], "an Event announces the transition"


def test_a_gateway_named_without_the_gateway_api_is_not_ready_and_still_serves(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    """rollout.canary.gateway where gateway.networking.k8s.io is not served (this cluster; the Gateway
    itself is proved in e2e/test_gateway.py): Ready and Stalled say so, the pods and Services are there."""
    canary = {"steps": [{"weight": 10}], "gateway": {"name": "edge"}}
    kubectl.apply(_example(namespace, autoscaling=None, rollout={"canary": canary}))
    md = wait_condition(kubectl, "md", "resnet50", "Stalled", "True", namespace=namespace, timeout=60)
    for condition in ("Stalled", "Ready"):  # not what was asked for: no route can split its traffic
        found = find_condition(md, condition)
        assert found is not None and found["reason"] == "GatewayApiNotInstalled", found
        assert "gateway.networking.k8s.io/v1 API is not served" in found["message"]
    # ... while the pods serve behind the Service
    wait_condition(kubectl, "md", "resnet50", "Available", "True", namespace=namespace, timeout=60)
    for service in ("resnet50", "resnet50-stable", "resnet50-canary"):
        kubectl("get", "service", service, namespace=namespace)
    assert all(
        p["metadata"]["labels"]["kubeforge.io/revision"] == "stable"
        for p in _pods(kubectl, namespace, "resnet50")
    )


def test_hand_edited_child_is_restored_and_delete_cascades(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(_example(namespace, autoscaling=None))
    wait_condition(kubectl, "md", "resnet50", "Ready", "True", namespace=namespace, timeout=60)
    kubectl(
        "patch",
        "deployment",
        "resnet50",
        "--type=json",
        "-p",
        '[{"op":"replace","path":"/spec/template/spec/containers/0/image","value":"evil:latest"}]',
        namespace=namespace,
    )
    wait_for(
        lambda: (
            kubectl.json("get", "deployment", "resnet50", namespace=namespace)["spec"]["template"]["spec"][
                "containers"
            ][0]["image"]
            == "nvcr.io/nvidia/tritonserver:25.10-py3"
        ),
        timeout=30,
        message="the operator to restore the Deployment",
    )
    kubectl("delete", "service", "resnet50", namespace=namespace)
    wait_for(
        lambda: kubectl("get", "service", "resnet50", namespace=namespace, check=False).returncode == 0,
        timeout=30,
        message="the Service to come back",
    )

    kubectl("delete", "md", "resnet50", "--wait=true", namespace=namespace)
    wait_for(
        lambda: all(
            kubectl("get", kind, "resnet50", namespace=namespace, check=False).returncode != 0
            for kind in ("deployment", "service")
        ),
        timeout=60,
        message="the garbage collector to delete the children",
    )


def _writes(operator: Any) -> int:
    # a watch (re-established every 45 s per kind) and a dry run write nothing
    calls = operator.api_calls()
    return sum(n for verb, n in calls.items() if verb not in ("get", "list", "discovery", "watch", "dry_run"))


def test_no_op_resync_makes_zero_writes(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(_example(namespace))
    wait_condition(kubectl, "md", "resnet50", "Ready", "True", namespace=namespace, timeout=60)
    wait_for(
        lambda: (
            find_condition(kubectl.json("get", "md", "resnet50", namespace=namespace), "AutoscalingReady")[
                "status"
            ]
            != "Unknown"
        ),
        timeout=90,
        message="HPA settled",
    )  # type: ignore[index]

    def quiet() -> bool:
        before = _writes(operator)
        import time

        time.sleep(3)
        return _writes(operator) == before

    wait_for(quiet, timeout=60, message="the operator to settle")
    before = _writes(operator)
    reconciles_before = operator.reconciles()
    # metadata-only changes reach the operator as watch events and trigger full reconciles
    for i in range(3):
        kubectl(
            "annotate", "md", "resnet50", f"test.kubeforge.io/touch={i}", "--overwrite", namespace=namespace
        )
    wait_for(lambda: operator.reconciles() >= reconciles_before + 3, timeout=30, message="three reconciles")
    assert _writes(operator) == before
