"""`make dev` (e2e/dev.py) waits for the examples it applied, not for every object in the cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e import dev
from e2e.kube import Kubectl, wait_condition
from kubeforge.builders.output import TRAINED_BY_LABEL as TRAINED_BY

pytestmark = pytest.mark.e2e
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "model-deployment.yaml"


def _model_deployment(namespace: str, name: str, gpu_product: str | None = None) -> str:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"].update(namespace=namespace, name=name)
    if gpu_product is not None:
        doc["spec"]["gpu"]["product"] = gpu_product
    return json.dumps(doc)


def test_up_waits_for_its_examples_and_reports_a_stuck_object_it_did_not_apply(
    kubectl: Kubectl, namespace: str, operator: Any, models_claim: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A developer's own object that never gets Ready: no node has this GPU.
    kubectl.apply(_model_deployment(namespace, "someone-elses", gpu_product="NVIDIA-NO-SUCH-GPU"))
    kubectl.apply(_model_deployment(namespace, "example"))
    wait_condition(kubectl, "md", "example", "Ready", "True", namespace=namespace, timeout=60)

    examples = dev._example_keys(
        [
            yaml.safe_load(_model_deployment(namespace, "example")),
            {"kind": "Service", "metadata": {"name": "x"}},
        ]
    )
    assert examples == {("ModelDeployment", namespace, "example")}
    assert dev._wait_for_examples(kubectl, examples, timeout=30, finish_jobs_after=None)
    out = capsys.readouterr().out
    assert "all examples reached their goal" in out
    # other tests' objects on this cluster may be listed too: find ours on the line
    [line] = [line for line in out.splitlines() if "not there yet (not waited for): " in line]
    assert f"ModelDeployment {namespace}/someone-elses" in line.split(": ", 1)[1].split(", "), line

    # The same stuck object among the examples fails the wait, naming it.
    stuck = {("ModelDeployment", namespace, "someone-elses")}
    assert not dev._wait_for_examples(kubectl, stuck, timeout=3, finish_jobs_after=None)
    assert f"not there after 3s: ModelDeployment {namespace}/someone-elses" in capsys.readouterr().err


def test_a_model_deployment_an_example_training_job_handed_off_to_is_waited_for() -> None:
    examples = {("TrainingJob", "default", "tabular-mlp")}
    handed_off = {
        "kind": "ModelDeployment",
        "metadata": {
            "namespace": "default",
            "name": "tabular-mlp-serving",
            "labels": {TRAINED_BY: "tabular-mlp"},
        },
    }
    assert dev._is_example(handed_off, examples)
    elsewhere = {**handed_off, "metadata": {**handed_off["metadata"], "namespace": "team-a"}}
    assert not dev._is_example(elsewhere, examples)
    assert not dev._is_example({"kind": "ModelDeployment", "metadata": {"name": "mine"}}, examples)
