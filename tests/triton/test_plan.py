"""The init container's plan: what the builder puts in KUBEFORGE_MODELS, and how it is read back."""

from __future__ import annotations

import json

import pytest

from kubeforge.api.modeldeployment import ModelSpec
from kubeforge.triton.config import render_model_config
from kubeforge.triton.repository import (
    PlanError,
    PlannedModel,
    assemble_args,
    parse_plan,
    pvc_claim,
    pvc_claims,
    pvc_mount_path,
    repository_plan,
)


def model(name: str, source: str, config: dict[str, object] | None = None) -> ModelSpec:
    body: dict[str, object] = {"name": name, "source": source, "format": "python"}
    if config is not None:
        body["config"] = config
    return ModelSpec.model_validate(body)


MODELS = [
    model("add", "pvc://models/add", {"maxBatchSize": 8}),
    model("resnet", "https://example.com/resnet.tar.gz"),
    model("bert", "s3://bucket/bert"),
    model("more", "pvc://models/more"),
    model("other", "pvc://cache"),
]


def test_plan_is_json_with_the_rendered_config() -> None:
    entries = json.loads(repository_plan(MODELS[:2]))
    assert entries == [
        {
            "name": "add",
            "source": "pvc://models/add",
            "format": "python",
            "configPbtxt": render_model_config(MODELS[0]),
        },
        {
            "name": "resnet",
            "source": "https://example.com/resnet.tar.gz",
            "format": "python",
            "configPbtxt": None,
        },
    ]


def test_plan_is_deterministic_and_round_trips() -> None:
    text = repository_plan(MODELS)
    assert text == repository_plan(list(MODELS))
    assert parse_plan(text) == [
        PlannedModel(m.name, m.source, m.format.value, render_model_config(m)) for m in MODELS
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "is not JSON"),
        ("[]", "non-empty JSON list"),
        ("{}", "non-empty JSON list"),
        ("[1]", "[0] must be an object"),
        ('[{"source": "pvc://a", "format": "python"}]', "[0].name must be a non-empty string"),
        ('[{"name": "a", "format": "python"}]', "[0].source must be a non-empty string"),
        ('[{"name": "a", "source": "pvc://a"}]', "[0].format must be a non-empty string"),
        ('[{"name": "../etc", "source": "pvc://a", "format": "python"}]', "not a valid model name"),
        ('[{"name": "a", "source": "pvc://a", "format": "python", "configPbtxt": 3}]', "string or null"),
        (
            '[{"name": "a", "source": "pvc://a", "format": "python"},'
            ' {"name": "a", "source": "pvc://b", "format": "python"}]',
            "names must be unique",
        ),
    ],
)
def test_bad_plans_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(PlanError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_plan(text)


def test_pvc_claims_and_mounts() -> None:
    assert pvc_claim("pvc://models/add") == "models"
    assert pvc_claim("pvc://cache") == "cache"
    assert pvc_claim("s3://bucket/x") is None
    assert pvc_claims(MODELS) == ["cache", "models"]
    assert pvc_mount_path("models") == "/mnt/pvc/models"
    assert pvc_mount_path("models", "/pvc/") == "/pvc/models"


def test_assemble_args_match_the_cli() -> None:
    assert assemble_args() == ["assemble-repository", "--out", "/models", "--pvc-root", "/mnt/pvc"]
