"""Spec in, Triton Deployment / Service / PDB out."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubeforge.api import ModelDeployment
from kubeforge.builders.modeldeployment import (
    RESTRICT_SCRIPT,
    build_pod_disruption_budget,
    build_service,
    build_triton_deployment,
    endpoints,
    triton_args,
)
from kubeforge.settings import Settings


def _variant(body: dict[str, Any], **spec: Any) -> ModelDeployment:
    body = json.loads(json.dumps(body))
    for key, value in spec.items():
        if value is None:
            body["spec"].pop(key, None)
        else:
            body["spec"][key] = value
    return ModelDeployment.model_validate(body)


def test_deployment_identity_owner_and_selector(md: ModelDeployment, settings: Settings) -> None:
    dep = build_triton_deployment(md, settings)
    assert dep["metadata"]["name"] == "resnet50"
    assert dep["metadata"]["namespace"] == "team-a"
    owner = dep["metadata"]["ownerReferences"][0]
    assert owner == {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "name": "resnet50",
        "uid": "0000-uid",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubeforge"


def test_triton_container_ports_probes_and_args(md: ModelDeployment, settings: Settings) -> None:
    pod = build_triton_deployment(md, settings)["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["image"] == "triton:test"
    # tritonserver behind a shell that restricts the APIs no client needs (its token never leaves it)
    assert triton["command"] == ["/bin/sh", "-c", RESTRICT_SCRIPT, "tritonserver"]
    assert {"name": "KUBEFORGE_RESTRICTED_APIS", "value": "shared-memory,trace,logging"} in triton["env"]
    assert "--model-repository=/models" in triton["args"]
    assert "--strict-readiness=true" in triton["args"]
    assert "--model-control-mode=none" in triton["args"]
    assert [(p["name"], p["containerPort"]) for p in triton["ports"]] == [
        ("http", 8000),
        ("grpc", 8001),
        ("metrics", 8002),
    ]
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert triton["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # the startup probe covers the default 30-minute model load before liveness applies
    startup = triton["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 1800


def test_gpu_limits_product_affinity_toleration(md: ModelDeployment, settings: Settings) -> None:
    pod = build_triton_deployment(md, settings)["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["requests"] == {"cpu": "4", "memory": "16Gi"}
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert terms == [
        {
            "matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]}
            ]
        }
    ]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


def test_mig_profile_becomes_one_mig_resource(md_body: dict[str, Any], settings: Settings) -> None:
    md = _variant(md_body, gpu={"mig": "1g.10gb"})
    limits = build_triton_deployment(md, settings)["spec"]["template"]["spec"]["containers"][0]["resources"][
        "limits"
    ]
    assert limits == {"memory": "16Gi", "nvidia.com/mig-1g.10gb": "1"}


def test_cpu_only_has_no_gpu_toleration_or_affinity(md_body: dict[str, Any], settings: Settings) -> None:
    md = _variant(md_body, gpu=None)
    pod = build_triton_deployment(md, settings)["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "affinity" not in pod
    assert "nvidia.com/gpu" not in str(pod["containers"][0]["resources"])
    assert "--allow-gpu-metrics=false" in pod["containers"][0]["args"]


def test_user_affinity_terms_each_get_the_product(md_body: dict[str, Any], settings: Settings) -> None:
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
    rack = {"key": "rack", "operator": "Exists"}
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [zone]}, {"matchExpressions": [rack]}]
            }
        },
        "podAntiAffinity": {"x": 1},
    }
    md = _variant(md_body, placement={"affinity": affinity})
    got = build_triton_deployment(md, settings)["spec"]["template"]["spec"]["affinity"]
    terms = got["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert all(t["matchExpressions"][-1]["key"] == "nvidia.com/gpu.product" for t in terms)
    assert got["podAntiAffinity"] == {"x": 1}
    assert affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][
        0
    ] == {"matchExpressions": [zone]}


def test_dev_shm_in_memory_sized_from_spec(md: ModelDeployment, settings: Settings) -> None:
    pod = build_triton_deployment(md, settings)["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod["volumes"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in pod["containers"][0]["volumeMounts"]


@pytest.mark.parametrize(
    ("gpu", "rollout", "expected"),
    [
        ({"count": 1}, None, {"maxSurge": 0, "maxUnavailable": 1}),
        (None, None, {"maxSurge": "25%", "maxUnavailable": "25%"}),
        ({"count": 1}, {"maxSurge": 1, "maxUnavailable": 0}, {"maxSurge": 1, "maxUnavailable": 0}),
    ],
)
def test_rollout_strategy(
    md_body: dict[str, Any], settings: Settings, gpu: Any, rollout: Any, expected: Any
) -> None:
    md = _variant(md_body, gpu=gpu, rollout=rollout)
    assert build_triton_deployment(md, settings)["spec"]["strategy"]["rollingUpdate"] == expected


def test_pvc_source_is_mounted_read_only_in_the_init_container(
    md: ModelDeployment, settings: Settings
) -> None:
    pod = build_triton_deployment(md, settings)["spec"]["template"]["spec"]
    assert {"name": "pvc-models", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod[
        "volumes"
    ]
    init = pod["initContainers"][0]
    assert init["image"] == "kubeforge:test"
    assert init["command"] == ["kubeforge", "assemble-repository"]
    assert {"name": "pvc-models", "mountPath": "/mnt/pvc/models", "readOnly": True} in init["volumeMounts"]
    plan = json.loads(next(e["value"] for e in init["env"] if e["name"] == "KUBEFORGE_MODELS"))
    assert plan[0]["name"] == "resnet50" and "max_batch_size: 32" in plan[0]["configPbtxt"]


def test_restricted_pod_security(md: ModelDeployment, settings: Settings) -> None:
    pod = build_triton_deployment(md, settings)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in [*pod["containers"], *pod["initContainers"]]:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }


def test_pod_template_is_deterministic_and_changes_only_with_the_spec(
    md_body: dict[str, Any], settings: Settings
) -> None:
    a = build_triton_deployment(ModelDeployment.model_validate(md_body), settings)
    b = build_triton_deployment(ModelDeployment.model_validate(md_body), settings)
    assert a == b
    scaled = _variant(md_body, replicas=3)
    assert build_triton_deployment(scaled, settings)["spec"]["template"] == a["spec"]["template"]
    new_image = _variant(md_body, runtime={"image": "triton:other"})
    assert build_triton_deployment(new_image, settings)["spec"]["template"] != a["spec"]["template"]


def test_explicit_mode_loads_every_model(md_body: dict[str, Any]) -> None:
    md = _variant(md_body, runtime={"modelControlMode": "explicit"})
    assert "--load-model=resnet50" in triton_args(md)


def test_service_ports_and_selector(md: ModelDeployment) -> None:
    svc = build_service(md)
    assert svc["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [
        ("http", 8000),
        ("grpc", 8001),
        ("metrics", 8002),
    ]
    assert (
        svc["spec"]["selector"] == build_triton_deployment(md, Settings())["spec"]["selector"]["matchLabels"]
    )


def test_pdb_only_with_more_than_one_replica(md_body: dict[str, Any]) -> None:
    assert build_pod_disruption_budget(_variant(md_body, replicas=1)) is None
    pdb = build_pod_disruption_budget(_variant(md_body, replicas=3))
    assert pdb is not None and pdb["spec"]["maxUnavailable"] == 1


def test_endpoints(md: ModelDeployment) -> None:
    assert endpoints(md, Settings()) == {
        "http": "http://resnet50.team-a.svc.cluster.local:8000",
        "grpc": "resnet50.team-a.svc.cluster.local:8001",
        "metrics": "http://resnet50.team-a.svc.cluster.local:8002/metrics",
    }


def test_streaming_models_get_a_generate_stream_endpoint(md_body: dict[str, Any]) -> None:
    models = [
        {"name": "lm", "source": "pvc://models/lm", "format": "python", "config": {"decoupled": True}},
        {
            "name": "classifier",
            "source": "pvc://models/c",
            "format": "python",
            "config": {"decoupled": False},
        },
        {"name": "llama", "source": "pvc://models/llama", "format": "vllm"},  # vLLM is always decoupled
        {"name": "resnet", "source": "pvc://models/r", "format": "onnx"},
    ]
    urls = endpoints(_variant(md_body, models=models), Settings())
    assert urls["generate"] == [
        "http://resnet50.team-a.svc.cluster.local:8000/v2/models/lm/generate",
        "http://resnet50.team-a.svc.cluster.local:8000/v2/models/llama/generate",
    ]
    assert urls["generate_stream"] == [
        "http://resnet50.team-a.svc.cluster.local:8000/v2/models/lm/generate_stream",
        "http://resnet50.team-a.svc.cluster.local:8000/v2/models/llama/generate_stream",
    ]


def test_a_decoupled_model_renders_its_transaction_policy(md_body: dict[str, Any]) -> None:
    models = [{"name": "lm", "source": "pvc://models/lm", "format": "python", "config": {"decoupled": True}}]
    deployment = build_triton_deployment(_variant(md_body, models=models), Settings())
    init = deployment["spec"]["template"]["spec"]["initContainers"][0]
    plan = json.loads(next(e["value"] for e in init["env"] if e["name"] == "KUBEFORGE_MODELS"))
    assert "model_transaction_policy {\n  decoupled: true\n}" in plan[0]["configPbtxt"]
