"""Bad input is refused with the field path in the message; the examples are valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kubeforge.api import ModelDeployment, TrainingJob
from kubeforge.api.base import ApiModel
from kubeforge.controllers.invalid import describe
from tests.data.invalid_specs import EXAMPLES, INVALID_SPECS, OPERATOR_ONLY_SPECS, InvalidSpec

MODELS: dict[str, type[ApiModel]] = {"ModelDeployment": ModelDeployment, "TrainingJob": TrainingJob}


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs
    for doc in docs:
        MODELS[doc["kind"]].model_validate(doc)


def test_the_table_covers_both_kinds_and_at_least_15_cases() -> None:
    assert len(INVALID_SPECS) >= 15
    assert {case.base for case in INVALID_SPECS} == {
        "model-deployment.yaml",
        "training-job.yaml",
        "llm-vllm.yaml",
    }
    assert len({case.id for case in INVALID_SPECS}) == len(INVALID_SPECS)


@pytest.mark.parametrize("case", INVALID_SPECS + OPERATOR_ONLY_SPECS, ids=lambda c: c.id)
def test_invalid_spec_is_refused_with_field_path(case: InvalidSpec) -> None:
    body = case.body()
    with pytest.raises(ValidationError) as info:
        MODELS[body["kind"]].model_validate(body)
    message = describe(info.value)
    assert case.expect in message, message


def test_describe_uses_wire_names_and_indexes() -> None:
    body = INVALID_SPECS[1].body()
    with pytest.raises(ValidationError) as info:
        ModelDeployment.model_validate(body)
    assert describe(info.value).startswith("spec.models[0].source: String should match pattern")


def test_readme_examples_are_valid() -> None:
    """The YAML a user copies from the README validates (the ten lines, and the autoscaling block)."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in readme.split("```yaml\n")[1:]]
    ten_lines = yaml.safe_load(blocks[0])
    ModelDeployment.model_validate(ten_lines)
    autoscaling = yaml.safe_load(blocks[1])["autoscaling"]
    spec = {**ten_lines["spec"], "autoscaling": autoscaling}
    ModelDeployment.model_validate({**ten_lines, "spec": spec})
