"""A language model on Triton's vLLM backend, on one node, against the real control plane.

Multi-node replicas (LeaderWorkerSet) and the model cache have their own modules; here: placement
of a tensor-parallel engine on the GPUs of one H100 node, its status and endpoints, day-2 edits of
the engine settings across an operator restart, and the honest failures (a model that cannot fit,
engine arguments the operator refuses).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.convergence import model_deployment_differences
from e2e.kube import Kubectl, find_condition, wait_condition, wait_for
from e2e.operator_proc import OperatorProcess
from kubeforge.settings import Settings

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "llm-vllm.yaml"
NAME = "qwen-32b"
H100 = "NVIDIA-H100-80GB-HBM3"


def _llm(namespace: str, **spec: Any) -> dict[str, Any]:
    """The single-node example without its cache (the cache has its own tests), in `namespace`."""
    doc: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["namespace"] = namespace
    doc["spec"].pop("cache")
    doc["spec"]["models"][0]["source"] = "pvc://models/qwen2.5-32b-instruct"
    doc["spec"].update(spec)
    return doc


def _plan(kubectl: Kubectl, namespace: str) -> list[dict[str, Any]]:
    dep = kubectl.json("get", "deployment", NAME, namespace=namespace)
    init = dep["spec"]["template"]["spec"]["initContainers"][0]
    plan: list[dict[str, Any]] = json.loads(
        next(e["value"] for e in init["env"] if e["name"] == "KUBEFORGE_MODELS")
    )
    return plan


def _converged(kubectl: Kubectl, namespace: str) -> None:
    settings = Settings.from_env()

    def clean() -> bool:
        md = kubectl.json("get", "md", NAME, namespace=namespace)
        observed = (md.get("status") or {}).get("observedGeneration") == md["metadata"]["generation"]
        return observed and model_deployment_differences(kubectl, NAME, namespace, settings) == []

    wait_for(clean, timeout=60, message="children equal the builders' output of the current spec")


def test_a_tensor_parallel_llm_lands_on_one_h100_node_and_reports_its_endpoints(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    kubectl.apply(json.dumps(_llm(namespace)))
    md = wait_condition(kubectl, "md", NAME, "Ready", "True", namespace=namespace, timeout=90)
    base = f"http://{NAME}.{namespace}.svc.cluster.local:8000/v2/models/qwen2.5-32b-instruct"
    assert md["status"]["endpoints"]["generate"] == [f"{base}/generate"]
    assert md["status"]["endpoints"]["generateStream"] == [f"{base}/generate_stream"]
    (pod,) = [
        p
        for p in kubectl.json("get", "pods", "-l", f"kubeforge.io/owner-name={NAME}", namespace=namespace)[
            "items"
        ]
        if not p["metadata"].get("deletionTimestamp")
    ]
    triton = pod["spec"]["containers"][0]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "4"  # tensor parallel 4: one pod, 4 GPUs
    node = kubectl.json("get", "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
    (model,) = _plan(kubectl, namespace)
    assert model["engineArgs"] == {
        "tensor_parallel_size": 4,
        "max_model_len": 16384,
        "gpu_memory_utilization": 0.9,
        "dtype": "bfloat16",
        "enable_prefix_caching": True,
        "max_num_seqs": 128,
    }
    assert 'backend: "vllm"' in model["configPbtxt"] and "decoupled: true" in model["configPbtxt"]


def test_engine_edits_converge_across_an_operator_restart(
    kubectl: Kubectl, namespace: str, own_operator: OperatorProcess, models_claim: str
) -> None:
    own_operator.start()
    doc = _llm(namespace)
    kubectl.apply(json.dumps(doc))
    wait_condition(kubectl, "md", NAME, "Ready", "True", namespace=namespace, timeout=90)
    _converged(kubectl, namespace)

    # add fields (LoRA, an engine argument) and remove others (dtype, maxModelLen) while it is down
    own_operator.stop()
    llm = doc["spec"]["models"][0]["llm"]
    patch = {
        "dtype": None,
        "maxModelLen": None,
        "loraAdapters": [{"name": "sql", "source": "pvc://models/sql-lora"}],
        "engineArgs": {"max_lora_rank": 32},
    }
    models = [
        {**doc["spec"]["models"][0], "llm": {k: v for k, v in {**llm, **patch}.items() if v is not None}}
    ]
    kubectl(
        "patch",
        "md",
        NAME,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"models": models}}),
        namespace=namespace,
    )
    own_operator.start()
    _converged(kubectl, namespace)
    (model,) = _plan(kubectl, namespace)
    assert "dtype" not in model["engineArgs"] and "max_model_len" not in model["engineArgs"]
    assert model["engineArgs"]["enable_lora"] is True and model["engineArgs"]["max_lora_rank"] == 32
    assert model["lora"] == {"sql": "pvc://models/sql-lora"}

    # and back: nothing of the adapter is left
    kubectl(
        "patch",
        "md",
        NAME,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"models": doc["spec"]["models"]}}),
        namespace=namespace,
    )
    _converged(kubectl, namespace)
    (model,) = _plan(kubectl, namespace)
    assert "lora" not in model and "enable_lora" not in model["engineArgs"]
    wait_condition(kubectl, "md", NAME, "Ready", "True", namespace=namespace, timeout=90)


def test_an_llm_that_cannot_fit_any_node_is_unschedulable_in_the_schedulers_words(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    # 16 H100s in one pod: no node has more than 8
    doc = _llm(namespace, gpu={"count": 16, "product": H100})
    doc["spec"]["models"][0]["llm"]["tensorParallelSize"] = 16
    kubectl.apply(json.dumps(doc))
    md = wait_condition(kubectl, "md", NAME, "Degraded", "True", namespace=namespace, timeout=60)
    degraded = find_condition(md, "Degraded")
    assert degraded is not None and degraded["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in degraded["message"], degraded["message"]


def test_engine_arguments_the_api_server_cannot_check_are_refused_by_the_operator_naming_the_field(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str
) -> None:
    doc = _llm(namespace)
    doc["spec"]["models"][0]["llm"]["engineArgs"] = {"tensor_parallel_size": 2}
    kubectl.apply(json.dumps(doc))  # CEL cannot range over an open object: the operator says no
    md = wait_condition(kubectl, "md", NAME, "Stalled", "True", namespace=namespace, timeout=60)
    stalled = find_condition(md, "Stalled")
    assert stalled is not None and stalled["reason"] == "InvalidSpec"
    assert "llm.engineArgs may not set" in stalled["message"], stalled["message"]
    assert "spec.models[0].llm" in stalled["message"], stalled["message"]
    assert not kubectl.json("get", "deployments", namespace=namespace)["items"]
