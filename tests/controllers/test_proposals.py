"""Proposals of trained models (controllers/proposals.py): the opt-in, the gate, the patch, the outcome.

The whole loop (jobs handing off and proposing, the canary, the promotion and the rollback) runs
against the real API server in e2e/test_retrain.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubeforge.api.modeldeployment import ModelDeployment, RolloutPhase, RolloutStatus, TrainedModel
from kubeforge.api.trainingjob import ProposalPhase, TrainingJob
from kubeforge.builders.output import PROPOSAL_ANNOTATION, proposal_record
from kubeforge.controllers import proposals


def _md(
    gate: dict[str, Any] | None, *, served: float | None = None, annotation: str | None = None
) -> ModelDeployment:
    spec: dict[str, Any] = {
        "models": [{"name": "shop", "source": "pvc://models/v1/shop", "format": "python"}]
    }
    if gate is not None:
        spec["rollout"] = {"proposals": {"jobLabels": {"pipeline": "shop"}, "model": "shop", "gate": gate}}
    status = (
        {"trainedModel": {"job": "job-1", "uri": "pvc://models/v1/shop", "validationLoss": served}}
        if served
        else None
    )
    return ModelDeployment.model_validate(
        {
            "metadata": {
                "name": "shop",
                "namespace": "ns",
                "annotations": {PROPOSAL_ANNOTATION: annotation} if annotation else {},
            },
            "spec": spec,
            **({"status": status} if status else {}),
        }
    )


def _job(
    name: str, loss: float | None, labels: dict[str, str] | None = None, version: str = "v2"
) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "metadata": {
                "name": name,
                "namespace": "ns",
                "labels": {"pipeline": "shop"} if labels is None else labels,
            },
            "spec": {
                "image": "trainer:1",
                "output": {"uri": f"pvc://models/{version}", "modelName": "shop", "proposeTo": "shop"},
            },
            "status": {"phase": "Succeeded", **({"validation": {"loss": loss}} if loss is not None else {})},
        }
    )


@pytest.mark.parametrize(
    ("gate", "served", "job", "accepted", "words"),
    [
        (
            {"maxValidationLoss": 2.0},
            None,
            _job("j", 1.5),
            True,
            "validation loss 1.5 is at most maxValidationLoss 2",
        ),
        (
            {"maxValidationLoss": 2.0},
            None,
            _job("j", 2.5),
            False,
            "2.5 is above the gate's maxValidationLoss 2",
        ),
        (
            {"betterThanServing": True},
            1.2,
            _job("j", 1.1),
            True,
            "lower than 1.2, the serving model's (TrainingJob job-1)",
        ),
        ({"betterThanServing": True}, 1.2, _job("j", 1.3), False, "1.3 is not lower than 1.2"),
        ({"betterThanServing": True}, None, _job("j", 1.0), False, "records no evaluation of its model"),
        ({"maxValidationLoss": 2.0}, None, _job("j", None), False, "recorded no validation loss"),
        ({"maxValidationLoss": 2.0}, None, _job("j", 1.0, labels={}), False, "labelled pipeline=shop"),
        (None, None, _job("j", 1.0), False, "accepts no proposals"),
    ],
)
def test_the_gate_judges_the_recorded_evaluation(
    gate: dict[str, Any] | None, served: float | None, job: TrainingJob, accepted: bool, words: str
) -> None:
    verdict, message = proposals.gate(_md(gate, served=served), job)
    assert verdict is accepted and words in message, message


def test_a_gate_needs_a_threshold_or_a_comparison() -> None:
    with pytest.raises(ValueError, match="gate needs maxValidationLoss, betterThanServing: true, or both"):
        _md({})


def test_the_patch_tests_the_models_name_and_records_the_proposal() -> None:
    body = {"metadata": {"annotations": {"a": "b"}}, "spec": {"models": [{"name": "x"}, {"name": "shop"}]}}
    ops = proposals._patch(body, "shop", "pvc://models/v2/shop", "{}")
    assert ops == [
        {"op": "test", "path": "/spec/models/1/name", "value": "shop"},
        {"op": "replace", "path": "/spec/models/1/source", "value": "pvc://models/v2/shop"},
        {"op": "add", "path": "/metadata/annotations/kubeforge.io~1proposal", "value": "{}"},
    ]
    bare = {"metadata": {}, "spec": {"models": [{"name": "shop"}]}}
    assert proposals._patch(bare, "shop", "u", "{}")[-1] == {
        "op": "add",
        "path": "/metadata/annotations",
        "value": {PROPOSAL_ANNOTATION: "{}"},
    }


def test_the_serving_models_evaluation_is_recorded_only_when_the_stable_serves_it() -> None:
    job = _job("job-1", 1.2, version="v1")
    md = _md({"betterThanServing": True}, annotation=proposal_record(job, "shop"))
    recorded = TrainedModel(job="job-1", uri="pvc://models/v1/shop", validation_loss=1.2)
    assert proposals.trained_model(md, None, None) == recorded
    # a newer release's record, with more in it, is read the same
    newer = json.dumps({**json.loads(proposal_record(job, "shop")), "evaluatedAt": "2027-01-01T00:00:00Z"})
    assert proposals.trained_model(_md({"betterThanServing": True}, annotation=newer), None, None) == recorded
    # a record of another source (the spec moved on by hand) is not what is served
    other = _md(
        {"betterThanServing": True}, annotation=proposal_record(_job("job-9", 0.1, version="v9"), "shop")
    )
    assert proposals.trained_model(other, recorded, None) is None
    # while a canary runs, the stable serves what it served before
    running = RolloutStatus(phase=RolloutPhase.PROGRESSING, summary="", message="")
    earlier = TrainedModel(job="job-0", uri="pvc://models/v0/shop", validation_loss=2.0)
    assert proposals.trained_model(md, earlier, running) == earlier


def test_a_proposed_job_follows_its_outcome() -> None:
    job = _job("job-3", 1.0, version="v3")
    uri = "pvc://models/v3/shop"
    record = proposal_record(job, "shop")
    md = _md({"betterThanServing": True}, annotation=record)
    assert proposals._outcome(md, job, uri) is None  # still rolling out
    promoted = ModelDeployment.model_validate(
        {**md.model_dump(by_alias=True), "status": {"trainedModel": {"job": "job-3", "uri": uri}}}
    )
    assert proposals._outcome(promoted, job, uri) == (
        ProposalPhase.PROMOTED,
        "ModelDeployment shop serves it",
    )
    rolled_back = ModelDeployment.model_validate(
        {
            **md.model_dump(by_alias=True),
            "status": {
                "rollout": {
                    "phase": "RolledBack",
                    "summary": "rolled back",
                    "message": "revision r rolled back (the analysis of step 1 failed)",
                    "proposal": {"job": "job-3", "uri": uri},
                }
            },
        }
    )
    assert proposals._outcome(rolled_back, job, uri) == (
        ProposalPhase.ROLLED_BACK,
        "revision r rolled back (the analysis of step 1 failed)",
    )
    later = _md(
        {"betterThanServing": True}, annotation=json.dumps({"job": "job-4", "uri": "pvc://models/v4/shop"})
    )
    assert proposals._outcome(later, job, uri) == (
        ProposalPhase.SUPERSEDED,
        "ModelDeployment shop took a later model first",
    )
    assert proposals._outcome(None, job, uri) == (ProposalPhase.SUPERSEDED, "the ModelDeployment was deleted")
