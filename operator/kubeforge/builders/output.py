"""Train -> serve: the ModelDeployment that serves a TrainingJob's exported model."""

from __future__ import annotations

import json
from typing import Any

from kubeforge import API_VERSION
from kubeforge.api.modeldeployment import ModelFormat, ModelSpec, TritonModelConfig
from kubeforge.api.trainingjob import Output, TrainingJob
from kubeforge.builders.meta import MANAGED_BY

TRAINED_BY_LABEL = "kubeforge.io/trained-by"
# the UID of the TrainingJob that created the ModelDeployment: a job hands off only to its own
TRAINED_BY_UID_ANNOTATION = "kubeforge.io/trained-by-uid"
# on a ModelDeployment: the trained model a TrainingJob handed off or proposed, with its evaluation
# (JSON: job, uri, validationLoss, model); controllers/proposals.py
PROPOSAL_ANNOTATION = "kubeforge.io/proposal"


def output_model_uri(tj: TrainingJob) -> str | None:
    """Where the trained model's directory is: <output.uri>/<output.modelName>."""
    output = tj.spec.output
    return f"{output.uri.rstrip('/')}/{output.model_name}" if output else None


def trained_model_spec(output: Output, source: str) -> ModelSpec:
    """How the ModelDeployment serves the exported model, by the format the trainer exported it in.

    A `python-llm` export is a Python-backend model whose config.pbtxt (written by the trainer) is
    decoupled; the spec says so too (`config.decoupled`, rendered over the exported config, which
    keeps the rest), because the operator cannot read the exported file and lists a streaming
    model's generate_stream URL in status.endpoints from the spec alone.
    """
    if output.format == "python-llm":
        return ModelSpec(
            name=output.model_name,
            source=source,
            format=ModelFormat.PYTHON,
            config=TritonModelConfig(decoupled=True),
        )
    return ModelSpec(name=output.model_name, source=source, format=ModelFormat(output.format))


def build_output_model_deployment(tj: TrainingJob) -> dict[str, Any] | None:
    """The ModelDeployment of spec.output.modelDeployment, with the trained model's source filled in.

    It has no owner reference on purpose: the served model outlives the job that trained it.
    """
    output = tj.spec.output
    if output is None or output.model_deployment is None:
        return None
    template = output.model_deployment
    source = output_model_uri(tj)
    assert source is not None
    trained = trained_model_spec(output, source)
    existing = {m.name: m for m in template.spec.models}
    if output.model_name in existing:
        trained = existing[output.model_name].model_copy(update={"source": source})
    models = [trained, *(m for m in template.spec.models if m.name != output.model_name)]
    spec = template.spec.model_copy(update={"models": models}).wire()
    labels = {
        **(template.labels or {}),
        TRAINED_BY_LABEL: tj.metadata.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    annotations = {
        TRAINED_BY_UID_ANNOTATION: tj.metadata.uid or "",
        PROPOSAL_ANNOTATION: proposal_record(tj, output.model_name),
    }
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {
            "name": template.name,
            "namespace": tj.metadata.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": spec,
    }


def proposal_record(tj: TrainingJob, model: str) -> str:
    """The PROPOSAL_ANNOTATION value for this job's trained model, served as `model`."""
    validation = tj.status.validation if tj.status else None
    record = {
        "job": tj.metadata.name,
        "uri": output_model_uri(tj),
        "validationLoss": validation.loss if validation else None,
        "model": model,
    }
    return json.dumps(record, separators=(",", ":"))


def created_by(model_deployment: dict[str, Any], tj: TrainingJob) -> bool:
    """Whether `model_deployment` is the one this very TrainingJob created (not a namesake's)."""
    annotations = model_deployment["metadata"].get("annotations") or {}
    return bool(tj.metadata.uid) and annotations.get(TRAINED_BY_UID_ANNOTATION) == tj.metadata.uid
