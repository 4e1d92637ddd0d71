"""The OpenAI front in the server pods (spec.openai): which models it serves, its container, the Service
port, the NetworkPolicy port and status.endpoints.openai; off removes all of them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from kubeforge.api import ModelDeployment, TrainingJob
from kubeforge.builders.cache import CACHE_ROOT
from kubeforge.builders.leaderworkerset import build_leaderworkerset
from kubeforge.builders.modeldeployment import (
    OPENAI_PORT,
    build_service,
    build_triton_deployment,
    endpoints,
    openai_models,
)
from kubeforge.builders.network import build_model_deployment_network_policy
from kubeforge.builders.output import build_output_model_deployment
from kubeforge.settings import Settings
from kubeforge.triton.repository import PLAN_ENV
from tests.data.invalid_specs import example

LLM = {
    "name": "opticks",
    "source": "pvc://model-store/language/opticks",
    "format": "python",
    "config": {"decoupled": True},
}
META = {"name": "lm", "namespace": "team-a", "uid": "u", "generation": 1}
CLASSIFIER = {"name": "resnet50", "source": "pvc://models/resnet50", "format": "onnx"}


def _md(*models: dict[str, Any], openai: dict[str, Any] | None = None) -> ModelDeployment:
    spec: dict[str, Any] = {"models": list(models), "replicas": 2}
    if openai is not None:
        spec["openai"] = openai
    return ModelDeployment.model_validate(
        {"metadata": {"name": "lm", "namespace": "team-a", "uid": "u", "generation": 1}, "spec": spec}
    )


def _containers(md: ModelDeployment, settings: Settings) -> dict[str, dict[str, Any]]:
    return {
        c["name"]: c for c in build_triton_deployment(md, settings)["spec"]["template"]["spec"]["containers"]
    }


def _inference_ports(md: ModelDeployment, settings: Settings) -> list[int]:
    policy = build_model_deployment_network_policy(md, settings)
    assert policy is not None
    return [p["port"] for p in policy["spec"]["ingress"][0]["ports"]]


def test_a_language_model_gets_the_front_its_port_and_its_endpoint() -> None:
    settings = Settings(network_policies=True)
    md = _md(CLASSIFIER, LLM)
    assert openai_models(md) == ["opticks"]
    front = _containers(md, settings)["openai"]
    assert front["image"] == settings.helper_image  # the operator's image
    assert front["command"] == ["kubeforge", "openai-front"]
    assert front["args"] == ["--port", "9000", "--triton", "http://127.0.0.1:8000", "--repository", "/models", "--model", "opticks"]  # fmt: skip
    assert front["ports"] == [{"name": "openai", "containerPort": OPENAI_PORT, "protocol": "TCP"}]
    assert front["readinessProbe"]["httpGet"] == {"path": "/health", "port": "openai"}
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in front["volumeMounts"]
    assert front["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    ports = {p["name"]: p for p in build_service(md)["spec"]["ports"]}
    assert ports["openai"] == {"name": "openai", "port": 9000, "targetPort": "openai", "protocol": "TCP"}
    assert endpoints(md, settings)["openai"] == "http://lm.team-a.svc.cluster.local:9000/v1"
    assert _inference_ports(md, settings) == [8000, 8001, 9000]


@pytest.mark.parametrize(
    "md",
    [
        _md(CLASSIFIER),  # no language model
        _md(LLM, openai={"enabled": False}),  # turned off
        _md({**LLM, "config": {"decoupled": False}}),  # a Python model that answers once
    ],
    ids=["no-language-model", "off", "not-streaming"],
)
def test_without_a_served_language_model_there_is_no_front(md: ModelDeployment) -> None:
    settings = Settings(network_policies=True)
    assert openai_models(md) == []
    assert list(_containers(md, settings)) == ["triton"]
    assert "openai" not in {p["name"] for p in build_service(md)["spec"]["ports"]}
    assert "openai" not in endpoints(md, settings)
    assert _inference_ports(md, settings) == [8000, 8001]


def test_with_a_model_cache_the_front_reads_the_links_into_it() -> None:
    md = _md(LLM)
    cached = ModelDeployment.model_validate({**md.model_dump(by_alias=True, exclude_none=True), "spec": {**md.model_dump(by_alias=True, exclude_none=True)["spec"], "cache": {"size": "10Gi"}}})  # fmt: skip
    mounts = _containers(cached, Settings())["openai"]["volumeMounts"]
    assert [m["mountPath"] for m in mounts] == ["/models", CACHE_ROOT]


def test_the_trained_language_model_handed_off_by_its_job_is_served_through_the_front() -> None:
    body = example("language-model.yaml")
    body["metadata"].update(uid="t", generation=1)
    handed = build_output_model_deployment(TrainingJob.model_validate(body))
    assert handed is not None
    md = ModelDeployment.model_validate(
        {**handed, "metadata": {**handed["metadata"], "uid": "m", "generation": 1}}
    )
    assert openai_models(md) == ["opticks"]
    assert "openai" in _containers(md, Settings())


VLLM = {
    "name": "qwen",
    "source": "hf://Qwen/Qwen2.5-0.5B-Instruct",
    "format": "vllm",
    "llm": {"loraAdapters": [{"name": "qwen-sql", "source": "pvc://adapters/sql"}]},
}


def test_a_vllm_model_is_served_through_the_front_and_in_a_group_by_its_leader() -> None:
    spec = {"models": [VLLM], "gpu": {"count": 1}}
    md = ModelDeployment.model_validate({"metadata": META, "spec": spec})
    assert openai_models(md) == ["qwen"]  # its adapters are found by the front in multi_lora.json
    assert _containers(md, Settings())["openai"]["args"][-2:] == ["--model", "qwen"]
    group = {**spec, "nodesPerReplica": 2, "models": [{**VLLM, "llm": {"pipelineParallelSize": 2}}]}
    md = ModelDeployment.model_validate({"metadata": META, "spec": group})
    lws = build_leaderworkerset(md, Settings())["spec"]["leaderWorkerTemplate"]
    assert [c["name"] for c in lws["leaderTemplate"]["spec"]["containers"]] == ["triton", "openai"]
    assert "openai" not in [c["name"] for c in lws["workerTemplate"]["spec"]["containers"]]


def test_a_chat_template_goes_into_the_plan_and_is_checked_as_jinja() -> None:
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    spec = {"models": [{**VLLM, "llm": {"chatTemplate": template}}], "gpu": {"count": 1}}
    md = ModelDeployment.model_validate({"metadata": META, "spec": spec})
    init = build_triton_deployment(md, Settings())["spec"]["template"]["spec"]["initContainers"][0]
    plan = json.loads(next(e["value"] for e in init["env"] if e["name"] == PLAN_ENV))
    assert plan[0]["chatTemplate"] == template
    broken = {"models": [{**VLLM, "llm": {"chatTemplate": "{% for m in messages %}"}}], "gpu": {"count": 1}}
    with pytest.raises(ValidationError, match=r"chatTemplate[\s\S]*not a Jinja2 template: line 1: .*endfor"):
        ModelDeployment.model_validate({"metadata": META, "spec": broken})


def test_an_adapter_may_not_share_a_name_with_a_model() -> None:
    clash = {**VLLM, "llm": {"loraAdapters": [{"name": "resnet50", "source": "pvc://adapters/x"}]}}
    spec = {"models": [clash, CLASSIFIER], "gpu": {"count": 1}}
    with pytest.raises(ValidationError, match=r"loraAdapters\[\]\.name must differ from every model's name"):
        ModelDeployment.model_validate({"metadata": META, "spec": spec})
