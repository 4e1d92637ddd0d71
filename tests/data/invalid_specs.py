"""Specs that break a rule, shared by the pydantic tests and the `kubectl apply` e2e tests.

Each case mutates a valid example and names a substring that both the operator's message and
the API server's must contain (the field path, or the rule's message that names the fields).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example(filename: str) -> dict[str, Any]:
    doc: dict[str, Any] = next(yaml.safe_load_all((EXAMPLES / filename).read_text()))
    return doc


@dataclass(frozen=True)
class InvalidSpec:
    id: str
    base: str  # example file
    mutate: Callable[[dict[str, Any]], None]
    expect: str  # substring of both the pydantic and the API-server message

    def body(self) -> dict[str, Any]:
        doc = copy.deepcopy(example(self.base))
        self.mutate(doc)
        return doc


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        node: Any = doc
        keys = [int(k) if k.isdigit() else k for k in path.split(".")]
        for key in keys[:-1]:
            node = node[key] if isinstance(key, int) else node.setdefault(key, {})
        node[keys[-1]] = value

    return mutate


def _all(*mutations: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        for m in mutations:
            m(doc)

    return mutate


MD = "model-deployment.yaml"
TJ = "training-job.yaml"
LLM = "llm-vllm.yaml"

INVALID_SPECS = [
    InvalidSpec("md-negative-replicas", MD, _set("spec.replicas", -1), "spec.replicas"),
    InvalidSpec(
        "md-bad-source-scheme", MD, _set("spec.models.0.source", "ftp://host/model"), "spec.models[0].source"
    ),
    InvalidSpec("md-unknown-format", MD, _set("spec.models.0.format", "caffe"), "spec.models[0].format"),
    InvalidSpec(
        "md-min-above-max",
        MD,
        _all(_set("spec.autoscaling.minReplicas", 5), _set("spec.autoscaling.maxReplicas", 2)),
        "autoscaling.minReplicas must be <= autoscaling.maxReplicas",
    ),
    InvalidSpec(
        "md-gpu-count-and-mig",
        MD,
        _set("spec.gpu.mig", "1g.10gb"),
        "gpu.count and gpu.mig are mutually exclusive",
    ),
    InvalidSpec("md-name-too-long", MD, _set("metadata.name", "m" * 64), "metadata.name"),
    InvalidSpec(
        "md-gateway-name-too-long",
        MD,
        _all(
            _set("metadata.name", "m" * 57),
            _set("spec.rollout", {"canary": {"steps": [{"weight": 10}], "gateway": {"name": "edge"}}}),
        ),
        "metadata.name must be at most 56 characters with rollout.canary.gateway",
    ),
    InvalidSpec(
        "md-gateway-bad-hostname",
        MD,
        _set(
            "spec.rollout",
            {"canary": {"steps": [{"weight": 10}], "gateway": {"name": "edge", "hostnames": ["Shop_1"]}}},
        ),
        "spec.rollout.canary.gateway.hostnames[0]",
    ),
    InvalidSpec("md-zero-gpus", MD, _set("spec.gpu.count", 0), "spec.gpu.count"),
    InvalidSpec(
        "md-scale-to-zero-without-keda",
        MD,
        _set("spec.autoscaling.minReplicas", 0),
        "minReplicas: 0 (scale to zero) needs autoscaling.engine: keda",
    ),
    InvalidSpec(
        "md-scale-to-zero-without-activation",
        MD,
        _set("spec.autoscaling", {"engine": "keda", "minReplicas": 0, "maxReplicas": 2}),
        "minReplicas: 0 needs autoscaling.activation",
    ),
    InvalidSpec(
        "md-activation-source-and-query",
        MD,
        _set(
            "spec.autoscaling",
            {
                "engine": "keda",
                "minReplicas": 0,
                "maxReplicas": 2,
                "activation": {"source": "ingress-nginx", "query": "up"},
            },
        ),
        "autoscaling.activation needs exactly one of source and query",
    ),
    InvalidSpec("md-no-models", MD, _set("spec.models", []), "spec.models"),
    InvalidSpec(
        "md-batching-without-batch-size",
        MD,
        _set("spec.models.0.config.maxBatchSize", 0),
        "config.dynamicBatching needs config.maxBatchSize > 0",
    ),
    InvalidSpec(
        "md-replicas-above-max",
        MD,
        _set("spec.replicas", 10),
        "replicas must not exceed autoscaling.maxReplicas",
    ),
    InvalidSpec("md-bad-shm-quantity", MD, _set("spec.shmSize", "lots"), "spec.shmSize"),
    InvalidSpec("md-bad-mig-profile", MD, _all(_set("spec.gpu", {"mig": "2g"})), "spec.gpu.mig"),
    InvalidSpec(
        "md-duplicate-model-names",
        MD,
        lambda d: d["spec"]["models"].append(copy.deepcopy(d["spec"]["models"][0])),
        "Duplicate value",
    ),
    InvalidSpec(
        "md-s3-without-credentials",
        MD,
        _set("spec.models.0.source", "s3://bucket/models/resnet50"),
        "storage.secretName is required",
    ),
    InvalidSpec("md-unknown-field", MD, _set("spec.replica", 2), "spec.replica"),
    InvalidSpec(
        "md-bad-autoscaling-engine", MD, _set("spec.autoscaling.engine", "knative"), "spec.autoscaling.engine"
    ),
    InvalidSpec("tj-zero-workers", TJ, _set("spec.workers", 0), "spec.workers"),
    InvalidSpec("tj-name-too-long", TJ, _set("metadata.name", "t" * 46), "metadata.name"),
    InvalidSpec(
        "tj-exit-code-out-of-range",
        TJ,
        _set("spec.failurePolicy.retryableExitCodes", [137, 300]),
        "spec.failurePolicy.retryableExitCodes[1]",
    ),
    InvalidSpec(
        "tj-https-output",
        TJ,
        _set("spec.output", {"uri": "https://example.com/models", "modelName": "m"}),
        "output.uri must be pvc://, s3:// or gs://",
    ),
    InvalidSpec("tj-too-many-gpus", TJ, _set("spec.gpu.count", 17), "spec.gpu.count"),
    InvalidSpec("tj-empty-image", TJ, _set("spec.image", ""), "spec.image"),
    InvalidSpec(
        "tj-relative-mount-path",
        TJ,
        _set("spec.checkpoint.mountPath", "checkpoints"),
        "spec.checkpoint.mountPath",
    ),
    InvalidSpec(
        "tj-negative-max-restarts",
        TJ,
        _set("spec.failurePolicy.maxRestarts", -1),
        "spec.failurePolicy.maxRestarts",
    ),
    InvalidSpec("tj-uppercase-name", TJ, _set("metadata.name", "Train-1"), "metadata.name"),
    InvalidSpec(
        "llm-without-vllm", LLM, _set("spec.models.0.format", "onnx"), "models[].llm needs format: vllm"
    ),
    InvalidSpec(
        "llm-tp-not-the-pod-gpus",
        LLM,
        _set("spec.models.0.llm.tensorParallelSize", 3),
        "tensorParallelSize x pipelineParallelSize must be a multiple of the GPUs of a pod (gpu.count)",
    ),
    InvalidSpec(
        "llm-tp-pp-not-the-replica-gpus",
        LLM,
        _set("spec.nodesPerReplica", 2),
        "tensorParallelSize x pipelineParallelSize must equal the GPUs of a replica",
    ),
    InvalidSpec(
        "llm-pipeline-within-a-node",
        LLM,
        _all(
            _set("spec.models.0.llm.tensorParallelSize", 2), _set("spec.models.0.llm.pipelineParallelSize", 2)
        ),
        "pipelineParallelSize > 1 needs a replica spanning several nodes",
    ),
    InvalidSpec(
        "llm-mig-tensor-parallel",
        LLM,
        _set("spec.gpu", {"mig": "1g.10gb"}),
        "a MIG slice (gpu.mig) is one device",
    ),
    InvalidSpec("llm-without-gpu", LLM, _set("spec.gpu", None), "gpu is required for a model with llm"),
    InvalidSpec("llm-bad-dtype", LLM, _set("spec.models.0.llm.dtype", "fp7"), "spec.models[0].llm.dtype"),
    InvalidSpec(
        "llm-multinode-two-models",
        LLM,
        _all(
            _set("spec.models.0.llm.pipelineParallelSize", 2),
            lambda doc: doc["spec"]["models"].append({"name": "b", "source": "pvc://m/b", "format": "onnx"}),
        ),
        "serves exactly one model",
    ),
    InvalidSpec(
        "llm-bad-hf-source", LLM, _set("spec.models.0.source", "hf://only-org"), "spec.models[0].source"
    ),
    InvalidSpec(
        "cache-claim-and-size",
        LLM,
        _set("spec.cache.claimName", "mine"),
        "cache needs exactly one of claimName",
    ),
    InvalidSpec(
        "llm-s3-lora-without-credentials",
        LLM,
        _set("spec.models.0.llm.loraAdapters", [{"name": "sql", "source": "s3://adapters/sql"}]),
        "storage.secretName is required when a model or LoRA adapter source is s3:// or gs://",
    ),
    InvalidSpec(
        "cache-read-write-once-multinode",
        LLM,
        _all(
            _set("spec.cache.accessMode", "ReadWriteOnce"),
            _set("spec.nodesPerReplica", 2),
            _set("spec.models.0.llm.tensorParallelSize", 8),
        ),
        "cache.accessMode ReadWriteOnce mounts on one node",
    ),
    InvalidSpec(
        "llm-and-config",
        LLM,
        _set("spec.models.0.config", {"maxBatchSize": 0}),
        "models[].llm and models[].config",
    ),
]

# Refused by the operator's own validation only (status Stalled with the message): the API server's
# CEL cannot range over an object whose fields the schema leaves open (llm.engineArgs).
OPERATOR_ONLY_SPECS = [
    InvalidSpec(
        "llm-typed-engine-arg",
        LLM,
        _set("spec.models.0.llm.engineArgs", {"tensor_parallel_size": 2}),
        "llm.engineArgs may not set",
    ),
    InvalidSpec(
        "llm-engine-arg-not-snake-case",
        LLM,
        _set("spec.models.0.llm.engineArgs", {"enforceEager": True}),
        "llm.engineArgs keys are vLLM engine argument names in snake_case",
    ),
]
