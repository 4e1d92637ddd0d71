"""Bad input is refused with the field path in the message; the examples are valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kubeforge.api import ModelDeployment, TrainingJob
from kubeforge.api.base import ApiModel
from kubeforge.controllers.invalid import describe, invalid_status, read_tolerantly
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


# -- version skew: what a newer CRD or release wrote ---------------------------------------------


def _example(name: str) -> dict[str, object]:
    doc: dict[str, object] = yaml.safe_load((EXAMPLES / name).read_text())
    return doc


def test_fields_a_newer_release_added_are_ignored_and_named() -> None:
    body = _example("training-job.yaml")
    body["spec"]["futureField"] = "x"  # type: ignore[index]
    body["spec"]["failurePolicy"]["newKnob"] = 1  # type: ignore[index]
    body["status"] = {"phase": "Running", "attempt": 2, "laterStatusField": {"a": 1}}
    tj, unknown = read_tolerantly(TrainingJob, body)
    assert unknown[:2] == ["spec.failurePolicy.newKnob", "spec.futureField"]
    assert tj.status is not None and tj.status.attempt == 2


def test_a_tolerant_read_still_refuses_a_bad_value_and_names_only_it() -> None:
    body = _example("training-job.yaml")
    body["spec"]["futureField"] = "x"  # type: ignore[index]
    body["spec"]["workers"] = 0  # type: ignore[index]
    with pytest.raises(ValidationError) as info:
        read_tolerantly(TrainingJob, body)
    assert describe(info.value).startswith("spec.workers:")


def test_a_refused_training_job_keeps_its_status_and_phase() -> None:
    body = _example("training-job.yaml")
    body["metadata"]["generation"] = 5  # type: ignore[index]
    status = {"phase": "Running", "attempt": 3, "restarts": 1, "startTime": "2026-12-01T00:00:00Z"}
    body["status"] = {**status, "observedGeneration": 4}
    refused, changed = invalid_status(body, "spec.x: bad", "Failed", None, keep_phase=True)
    assert changed
    assert {k: refused[k] for k in status} == status
    stalled = next(c for c in refused["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "InvalidSpec")
    # without a phase of its own (never reconciled), it is Failed
    del body["status"]
    assert invalid_status(body, "spec.x: bad", "Failed", None, keep_phase=True)[0]["phase"] == "Failed"
