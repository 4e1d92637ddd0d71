"""Day 2: after any edit, once observedGeneration catches up, every child is what the builders make.

A property test driven by the pydantic models: for every optional field of both kinds (and the
optional fields of their optional parts) it sets a non-default value, waits for the operator,
compares every child with the builders' output for the live spec (the API server judges, see
e2e/convergence.py), then removes the field and compares again. A removed field that stays on a
child, or a child that should be gone, fails it. One operator, one namespace per kind; the loop is
bounded by the tables' size.
"""

from __future__ import annotations

import json
import time
import typing
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from e2e.convergence import model_deployment_differences, training_job_differences
from e2e.kube import Kubectl, wait_for
from e2e.lws import LeaderWorkerSetController
from kubeforge.api.modeldeployment import ModelDeploymentSpec
from kubeforge.api.trainingjob import TrainingJobSpec
from kubeforge.settings import Settings

pytestmark = pytest.mark.e2e
Patch = dict[str, Any]

MODEL = {"name": "resnet50", "source": "pvc://models/resnet50", "format": "onnx"}
MD_BASE: Patch = {"models": [MODEL]}
TOLERATION = [{"key": "dedicated", "operator": "Equal", "value": "inference", "effect": "NoSchedule"}]
AFFINITY = {
    "podAntiAffinity": {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {
                "weight": 10,
                "podAffinityTerm": {
                    "topologyKey": "kubernetes.io/hostname",
                    "labelSelector": {"matchLabels": {"app": "x"}},
                },
            }
        ]
    }
}
AUTOSCALING = {"maxReplicas": 3, "targets": {"queueTimeMicroseconds": 50000}}
LANGUAGE_MODEL = {
    "name": "opticks",
    "source": "pvc://models/opticks",
    "format": "python",
    "config": {"decoupled": True},
}
LLM_MODEL = {"name": "qwen", "source": "hf://Qwen/Qwen2.5-7B-Instruct@main", "format": "vllm"}
LLM = {"dtype": "bfloat16", "loraAdapters": [{"name": "sql", "source": "pvc://adapters/sql"}]}

# path -> (a merge patch of spec that sets it, a merge patch that removes just that field or None).
# After each, the test also removes the whole top-level field.
MD_SAMPLES: dict[str, tuple[Patch, Patch | None]] = {
    # first: a LeaderWorkerSet instead of the Deployment; the next sample (models) brings the Deployment back
    "nodesPerReplica": (
        {
            "nodesPerReplica": 2,
            "gpu": {"count": 1},
            "models": [{**LLM_MODEL, "llm": {"pipelineParallelSize": 2}}],
        },
        {"nodesPerReplica": None},  # still two nodes: what pipelineParallelSize 2 needs at 1 GPU a pod
    ),
    "models.config": (
        {"models": [{**MODEL, "config": {"maxBatchSize": 8, "dynamicBatching": {}}}]},
        {"models": [MODEL]},
    ),
    "models.llm": (
        {
            "models": [
                {
                    **LLM_MODEL,
                    "llm": {
                        **LLM,
                        "maxModelLen": 4096,
                        "engineArgs": {"enforce_eager": True},
                        "chatTemplate": "{% for m in messages %}{{ m.content }}{% endfor %}",
                    },
                }
            ],
            "gpu": {"count": 2},
        },
        {"models": [{**LLM_MODEL, "llm": LLM}]},
    ),
    "replicas": ({"replicas": 3}, None),
    # a model cache's claim and fill Job; the Deployment waits for a fill that never completes here
    "cache": ({"cache": {"size": "1Gi"}}, None),
    "cache.claimName": ({"cache": {"claimName": "shared-model-cache"}}, None),
    "cache.size": ({"cache": {"size": "2Gi"}}, None),
    "cache.storageClassName": (
        {"cache": {"size": "1Gi", "storageClassName": "fast"}},
        {"cache": {"storageClassName": None}},
    ),
    "cache.accessMode": (
        {"cache": {"size": "1Gi", "accessMode": "ReadWriteOnce"}},
        {"cache": {"accessMode": None}},
    ),
    "runtime": ({"runtime": {"image": "nvcr.io/nvidia/tritonserver:24.01-py3"}}, None),
    "runtime.image": (
        {"runtime": {"image": "nvcr.io/nvidia/tritonserver:24.01-py3"}},
        {"runtime": {"image": None}},
    ),
    "runtime.modelControlMode": (
        {"runtime": {"modelControlMode": "explicit"}},
        {"runtime": {"modelControlMode": None}},
    ),
    "runtime.args": ({"runtime": {"args": ["--log-verbose=1"]}}, {"runtime": {"args": None}}),
    "runtime.env": ({"runtime": {"env": [{"name": "FOO", "value": "bar"}]}}, {"runtime": {"env": None}}),
    "runtime.startupTimeoutSeconds": (
        {"runtime": {"startupTimeoutSeconds": 600}},
        {"runtime": {"startupTimeoutSeconds": None}},
    ),
    "storage": ({"storage": {"secretName": "s3-credentials"}}, None),
    "network": ({"network": {"allowFrom": []}}, None),
    "network.allowFrom": (
        {"network": {"allowFrom": [{"namespaceSelector": {"matchLabels": {"team": "web"}}}]}},
        {"network": {"allowFrom": None}},
    ),
    "gpu": ({"gpu": {"count": 1}}, None),
    "gpu.count": ({"gpu": {"count": 2}}, {"gpu": {"count": None}}),
    "gpu.product": (
        {"gpu": {"count": 1, "product": "NVIDIA-H100-80GB-HBM3"}},
        {"gpu": {"product": None}},
    ),
    "gpu.mig": ({"gpu": {"mig": "1g.10gb"}}, {"gpu": {"mig": None}}),
    "resources": ({"resources": {"cpu": "2"}}, None),
    "resources.cpu": ({"resources": {"cpu": "2", "memory": "4Gi"}}, {"resources": {"cpu": None}}),
    "resources.memory": ({"resources": {"cpu": "2", "memory": "4Gi"}}, {"resources": {"memory": None}}),
    "resources.cpuLimit": ({"resources": {"cpu": "2", "cpuLimit": "4"}}, {"resources": {"cpuLimit": None}}),
    "shmSize": ({"shmSize": "4Gi"}, None),
    "autoscaling": ({"autoscaling": AUTOSCALING}, None),
    "autoscaling.engine": (
        {"autoscaling": {**AUTOSCALING, "engine": "hpa"}},
        {"autoscaling": {"engine": None}},
    ),
    "autoscaling.minReplicas": (
        {"autoscaling": {**AUTOSCALING, "minReplicas": 2}},
        {"autoscaling": {"minReplicas": None}},
    ),
    "autoscaling.targets": (
        {
            "autoscaling": {
                **AUTOSCALING,
                "targets": {"queueTimeMicroseconds": 20000, "inferencesPerSecond": 100, "pendingRequests": 8},
            }
        },
        {"autoscaling": {"targets": {"inferencesPerSecond": None, "pendingRequests": None}}},
    ),
    "autoscaling.activation": (
        {"autoscaling": {**AUTOSCALING, "activation": {"source": "ingress-nginx"}}},
        {"autoscaling": {"activation": None}},
    ),
    "autoscaling.behavior": (
        {"autoscaling": {**AUTOSCALING, "behavior": {"scaleDownStabilizationSeconds": 30}}},
        {"autoscaling": {"behavior": None}},
    ),
    "monitoring": ({"monitoring": {"serviceMonitor": False}}, None),
    "monitoring.serviceMonitor": (
        {"monitoring": {"serviceMonitor": False}},
        {"monitoring": {"serviceMonitor": None}},
    ),
    "rollout": ({"rollout": {"maxSurge": 1}}, None),
    "rollout.maxSurge": ({"rollout": {"maxSurge": 1}}, {"rollout": {"maxSurge": None}}),
    "rollout.maxUnavailable": (
        {"rollout": {"maxUnavailable": 0, "maxSurge": 1}},
        {"rollout": {"maxUnavailable": None}},
    ),
    # a canary configured while the template stays: nothing rolls (e2e/test_canary.py rolls one)
    "rollout.canary": (
        {"rollout": {"canary": {"steps": [{"weight": 50, "pauseSeconds": 30}]}}},
        {"rollout": {"canary": None}},
    ),
    "rollout.proposals": (
        {
            "rollout": {
                "proposals": {
                    "jobLabels": {"pipeline": "a"},
                    "model": MODEL["name"],
                    "gate": {"maxValidationLoss": 2},
                }
            }
        },
        {"rollout": {"proposals": None}},
    ),
    "placement": ({"placement": {"nodeSelector": {"pool": "inference"}}}, None),
    "placement.nodeSelector": (
        {"placement": {"nodeSelector": {"pool": "inference"}}},
        {"placement": {"nodeSelector": None}},
    ),
    "placement.tolerations": (
        {"placement": {"tolerations": TOLERATION}},
        {"placement": {"tolerations": None}},
    ),
    "placement.affinity": ({"placement": {"affinity": AFFINITY}}, {"placement": {"affinity": None}}),
    "placement.priorityClassName": (
        {"placement": {"priorityClassName": "inference-high"}},
        {"placement": {"priorityClassName": None}},
    ),
    "podMetadata": ({"podMetadata": {"labels": {"team": "a"}}}, None),
    "podMetadata.labels": ({"podMetadata": {"labels": {"team": "a"}}}, {"podMetadata": {"labels": None}}),
    "podMetadata.annotations": (
        {"podMetadata": {"annotations": {"note": "x"}}},
        {"podMetadata": {"annotations": None}},
    ),
    "serviceAccountName": ({"serviceAccountName": "triton"}, None),
    "imagePullSecrets": ({"imagePullSecrets": ["registry-credentials"]}, None),
    # the OpenAI front: on by default for a streaming Python model, off by openai.enabled: false
    "openai": ({"models": [LANGUAGE_MODEL], "openai": {"enabled": True}}, None),
    "openai.enabled": (
        {"models": [LANGUAGE_MODEL], "openai": {"enabled": False}},
        {"openai": {"enabled": None}},
    ),
}

TJ_BASE: Patch = {"image": "ghcr.io/kubeforge/trainer:0.1.0", "workers": 1}
OUTPUT = {"uri": "pvc://model-store/run", "modelName": "mlp"}
TJ_SAMPLES: dict[str, tuple[Patch, Patch | None]] = {
    "command": ({"command": ["python", "-m", "train"]}, None),
    "args": ({"args": ["--epochs", "1"]}, None),
    "env": ({"env": [{"name": "FOO", "value": "bar"}]}, None),
    "env.value": ({"env": [{"name": "FOO", "value": "bar"}]}, {"env": [{"name": "FOO"}]}),
    "env.valueFrom": (
        {"env": [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
        None,
    ),
    "workers": ({"workers": 2}, None),
    "processesPerWorker": ({"processesPerWorker": 2}, None),
    "gpu": ({"gpu": {"count": 1}}, None),
    "gpu.count": ({"gpu": {"count": 2}}, {"gpu": {"count": None}}),
    "gpu.product": ({"gpu": {"count": 1, "product": "NVIDIA-A100-SXM4-80GB"}}, {"gpu": {"product": None}}),
    "gpu.mig": ({"gpu": {"mig": "1g.10gb"}}, {"gpu": {"mig": None}}),
    "resources": ({"resources": {"cpu": "1"}}, None),
    "resources.cpu": ({"resources": {"cpu": "1", "memory": "2Gi"}}, {"resources": {"cpu": None}}),
    "resources.memory": ({"resources": {"cpu": "1", "memory": "2Gi"}}, {"resources": {"memory": None}}),
    "resources.cpuLimit": ({"resources": {"cpu": "1", "cpuLimit": "2"}}, {"resources": {"cpuLimit": None}}),
    "shmSize": ({"shmSize": "4Gi"}, None),
    "masterPort": ({"masterPort": 29500}, None),
    "failurePolicy": ({"failurePolicy": {"maxRestarts": 5}}, None),
    "failurePolicy.maxRestarts": (
        {"failurePolicy": {"maxRestarts": 5}},
        {"failurePolicy": {"maxRestarts": None}},
    ),
    "failurePolicy.backoffSeconds": (
        {"failurePolicy": {"backoffSeconds": 2}},
        {"failurePolicy": {"backoffSeconds": None}},
    ),
    "failurePolicy.retryableExitCodes": (
        {"failurePolicy": {"retryableExitCodes": [137]}},
        {"failurePolicy": {"retryableExitCodes": None}},
    ),
    "failurePolicy.countPreemptions": (
        {"failurePolicy": {"countPreemptions": True}},
        {"failurePolicy": {"countPreemptions": None}},
    ),
    "checkpoint": ({"checkpoint": {"claimName": "ckpt"}}, None),
    "checkpoint.mountPath": (
        {"checkpoint": {"claimName": "ckpt", "mountPath": "/ckpt"}},
        {"checkpoint": {"mountPath": None}},
    ),
    "checkpoint.subPath": (
        {"checkpoint": {"claimName": "ckpt", "subPath": "run-1"}},
        {"checkpoint": {"subPath": None}},
    ),
    "runPolicy": ({"runPolicy": {"activeDeadlineSeconds": 3600}}, None),
    "runPolicy.activeDeadlineSeconds": (
        {"runPolicy": {"activeDeadlineSeconds": 3600}},
        {"runPolicy": {"activeDeadlineSeconds": None}},
    ),
    "runPolicy.pendingDeadlineSeconds": (
        {"runPolicy": {"pendingDeadlineSeconds": 3600}},
        {"runPolicy": {"pendingDeadlineSeconds": None}},
    ),
    "runPolicy.ttlSecondsAfterFinished": (
        {"runPolicy": {"ttlSecondsAfterFinished": 3600}},
        {"runPolicy": {"ttlSecondsAfterFinished": None}},
    ),
    "runPolicy.suspend": ({"runPolicy": {"suspend": True}}, {"runPolicy": {"suspend": None}}),
    "scheduling": ({"scheduling": {"queue": "team-a"}}, None),
    "scheduling.queue": ({"scheduling": {"queue": "team-a"}}, {"scheduling": {"queue": None}}),
    "scheduling.placement": (
        {"scheduling": {"placement": {"nodeSelector": {"pool": "training"}}}},
        {"scheduling": {"placement": None}},
    ),
    "output": ({"output": OUTPUT}, None),
    "output.format": ({"output": {**OUTPUT, "format": "pytorch"}}, {"output": {"format": None}}),
    "output.modelDeployment": (
        {"output": {**OUTPUT, "modelDeployment": {"name": "mlp-serving", "spec": {"replicas": 1}}}},
        {"output": {"modelDeployment": None}},
    ),
    "output.proposeTo": ({"output": {**OUTPUT, "proposeTo": "mlp-serving"}}, {"output": {"proposeTo": None}}),
    "podMetadata": ({"podMetadata": {"labels": {"team": "a"}}}, None),
    "podMetadata.labels": ({"podMetadata": {"labels": {"team": "a"}}}, {"podMetadata": {"labels": None}}),
    "podMetadata.annotations": (
        {"podMetadata": {"annotations": {"note": "x"}}},
        {"podMetadata": {"annotations": None}},
    ),
    "terminationGracePeriodSeconds": ({"terminationGracePeriodSeconds": 30}, None),
    "serviceAccountName": ({"serviceAccountName": "trainer"}, None),
    "imagePullSecrets": ({"imagePullSecrets": ["registry-credentials"]}, None),
}


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    for arg in (annotation, *typing.get_args(annotation)):
        for inner in (arg, *typing.get_args(arg)):
            if isinstance(inner, type) and issubclass(inner, BaseModel):
                return inner
    return None


def optional_fields(model: type[BaseModel]) -> set[str]:
    """Wire paths of the optional fields of `model` and of its parts' optional fields (one level)."""
    paths: set[str] = set()
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if not field.is_required():
            paths.add(alias)
        inner = _nested_model(field.annotation)
        if inner is not None:
            paths |= {
                f"{alias}.{sub.alias or sub_name}"
                for sub_name, sub in inner.model_fields.items()
                if not sub.is_required()
            }
    return paths


@pytest.mark.parametrize(
    ("spec", "samples"), [(ModelDeploymentSpec, MD_SAMPLES), (TrainingJobSpec, TJ_SAMPLES)], ids=["md", "tj"]
)
def test_the_tables_cover_every_optional_field(spec: type[BaseModel], samples: dict[str, Any]) -> None:
    """A new optional field in the API must get a sample here, or this fails."""
    fields = {p for p in optional_fields(spec) if p.count(".") <= 1}
    assert fields - set(samples) == set(), "optional fields without a sample"
    assert set(samples) - fields == set(), "samples of fields that do not exist"


def _patch(kubectl: Kubectl, kind: str, name: str, namespace: str, spec_patch: Patch) -> None:
    kubectl("patch", kind, name, "--type=merge", "-p", json.dumps({"spec": spec_patch}), namespace=namespace)


def _converged(
    kubectl: Kubectl,
    kind: str,
    name: str,
    namespace: str,
    check: Callable[[], list[str]],
    poll: bool,
    step: str,
) -> None:
    def observed() -> bool:
        obj = kubectl.json("get", kind, name, namespace=namespace)
        return bool((obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"])

    wait_for(observed, timeout=30, message=f"{step}: observedGeneration")
    if not poll:
        problems = check()  # at once: the children are applied before the status says so
        assert problems == [], f"{step}: {problems}"
        return
    # a TrainingJob's new attempt waits for the old workers to exit: the Job follows shortly
    last: list[list[str]] = [[]]

    def clean() -> bool:
        last[0] = check()
        return not last[0]

    try:
        wait_for(clean, timeout=30, interval=0.3, message=step)
    except AssertionError:
        pytest.fail(f"{step}: {last[0]}")


def _walk(
    kubectl: Kubectl,
    kind: str,
    name: str,
    namespace: str,
    samples: dict[str, Any],
    check: Callable[[], list[str]],
) -> None:
    poll = kind == "tj"
    deadline = time.monotonic() + 540
    for path, (set_patch, leaf_unset) in samples.items():
        assert time.monotonic() < deadline, "the property test must stay within its time bound"
        top = path.split(".")[0]
        _patch(kubectl, kind, name, namespace, set_patch)
        _converged(kubectl, kind, name, namespace, check, poll, f"set {path}")
        if leaf_unset is not None:
            _patch(kubectl, kind, name, namespace, leaf_unset)
            _converged(kubectl, kind, name, namespace, check, poll, f"remove {path}")
        restore = {top: MD_BASE[top]} if kind == "md" and top in MD_BASE else {top: None}
        _patch(kubectl, kind, name, namespace, restore)
        _converged(kubectl, kind, name, namespace, check, poll, f"remove {top} after {path}")


def test_every_model_deployment_edit_converges(
    kubectl: Kubectl, namespace: str, lws: LeaderWorkerSetController, operator: Any
) -> None:
    body = {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "prop", "namespace": namespace},
        "spec": MD_BASE,
    }
    kubectl.apply(json.dumps(body))
    settings = Settings.from_env()

    def check() -> list[str]:
        return model_deployment_differences(kubectl, "prop", namespace, settings)

    _converged(kubectl, "md", "prop", namespace, check, False, "create")
    _walk(kubectl, "md", "prop", namespace, MD_SAMPLES, check)


def test_every_training_job_edit_converges(kubectl: Kubectl, namespace: str, operator: Any) -> None:
    body = {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "prop", "namespace": namespace},
        "spec": TJ_BASE,
    }
    kubectl.apply(json.dumps(body))

    def check() -> list[str]:
        return training_job_differences(kubectl, "prop", namespace)

    _converged(kubectl, "tj", "prop", namespace, check, True, "create")
    _walk(kubectl, "tj", "prop", namespace, TJ_SAMPLES, check)
    tj = kubectl.json("get", "tj", "prop", namespace=namespace)
    assert tj["status"]["restarts"] == 0  # edits restart the gang, but are no failures
