"""Retrain -> evaluate -> canary -> promote: a TrainingJob proposes its trained model to an existing
ModelDeployment (spec.output.proposeTo), which opts in (spec.rollout.proposals).

When the job succeeds, the proposal is judged once, on what the job recorded:
- the ModelDeployment must exist and accept this job (its labels include `proposals.jobLabels`);
- the job's validation loss (status.validation) must pass `proposals.gate`: at most
  `maxValidationLoss`, and/or lower than the loss recorded for the model the ModelDeployment serves
  (`status.trainedModel`).

A refused proposal changes nothing. An accepted one replaces the source of `proposals.model` in the
ModelDeployment's spec (a JSON patch that tests the model's name at its index, so a concurrent edit
of the list is refused, not overwritten) and records the proposal in its `kubeforge.io/proposal`
annotation. From there it is an edit like any other: with `rollout.canary` it rolls out as a canary
with live analysis (controllers/canary.py), which promotes it or rolls it back.

The job then follows the ModelDeployment until the outcome: Promoted (its `status.trainedModel` is
this job's model), RolledBack (its rollout rolled this proposal back), or Superseded (a later
proposal replaced it first). Each verdict and outcome is in both objects' Events and in the job's
`status.proposal`.

The first hand-off (spec.output.modelDeployment: create one) keeps its contract; the
ModelDeployment it creates carries the proposal annotation, so its model's evaluation is recorded
as the one later proposals are compared with.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kubeforge.api.modeldeployment import ModelDeployment, RolloutPhase, RolloutStatus, TrainedModel
from kubeforge.api.trainingjob import Proposal, ProposalPhase, TrainingJob
from kubeforge.builders.output import PROPOSAL_ANNOTATION, output_model_uri, proposal_record
from kubeforge.controllers.context import Context
from kubeforge.controllers.invalid import read_tolerantly
from kubeforge.k8s import resources as r

Object = dict[str, Any]
# how soon a proposed job looks at its ModelDeployment again (its rollout sends the job no event)
FOLLOW_SECONDS = 5.0


def _record(md: ModelDeployment) -> dict[str, Any]:
    """The ModelDeployment's PROPOSAL_ANNOTATION as JSON ({} when absent or unreadable)."""
    try:
        record = json.loads((md.metadata.annotations or {}).get(PROPOSAL_ANNOTATION) or "{}")
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def recorded_proposal(md: ModelDeployment) -> TrainedModel | None:
    """The proposal the ModelDeployment's annotation records, if it is what the spec serves now."""
    record = _record(md)
    if not record:
        return None
    try:
        # a newer release may record more: ignored
        proposal = TrainedModel.model_validate(
            {k: v for k, v in record.items() if k != "model"}, extra="ignore"
        )
        model = str(record["model"])
    except (ValueError, KeyError, TypeError, ValidationError):
        return None
    served = any(m.name == model and m.source == proposal.uri for m in md.spec.models)
    return proposal if served else None


def trained_model(
    md: ModelDeployment, previous: TrainedModel | None, rollout: RolloutStatus | None
) -> TrainedModel | None:
    """status.trainedModel: the proposal the stable revision serves. While a canary runs, or after a
    rollback, the stable serves what it served before."""
    if rollout is not None and rollout.phase != RolloutPhase.COMPLETE:
        return previous
    return recorded_proposal(md)


def gate(md: ModelDeployment, tj: TrainingJob) -> tuple[bool, str]:
    """Whether the ModelDeployment accepts this job's model, and why (with the numbers)."""
    name = md.metadata.name
    proposals = md.spec.rollout.proposals if md.spec.rollout else None
    if proposals is None:
        return False, f"ModelDeployment {name} accepts no proposals (it has no spec.rollout.proposals)"
    labels = tj.metadata.labels or {}
    missing = {k: v for k, v in proposals.job_labels.items() if labels.get(k) != v}
    if missing:
        wanted = ",".join(f"{k}={v}" for k, v in sorted(proposals.job_labels.items()))
        return False, f"ModelDeployment {name} accepts proposals from TrainingJobs labelled {wanted}"
    validation = tj.status.validation if tj.status else None
    loss = validation.loss if validation else None
    if loss is None:
        return False, "the job recorded no validation loss (status.validation) for the gate"
    passed: list[str] = []
    limit = proposals.gate.max_validation_loss
    if limit is not None:
        if loss > limit:
            return False, f"validation loss {loss:.4g} is above the gate's maxValidationLoss {limit:.4g}"
        passed.append(f"at most maxValidationLoss {limit:.4g}")
    if proposals.gate.better_than_serving:
        serving = md.status.trained_model if md.status else None
        if serving is None or serving.validation_loss is None:
            return False, f"betterThanServing: ModelDeployment {name} records no evaluation of its model"
        if not loss < serving.validation_loss:
            return False, (
                f"validation loss {loss:.4g} is not lower than {serving.validation_loss:.4g}, the serving "
                f"model's (TrainingJob {serving.job})"
            )
        passed.append(
            f"lower than {serving.validation_loss:.4g}, the serving model's (TrainingJob {serving.job})"
        )
    return True, f"validation loss {loss:.4g} is {' and '.join(passed)}"


def _patch(md_body: Object, model: str, uri: str, record: str) -> list[Object]:
    """The JSON patch that proposes: the model's source (at its index, tested) and the record."""
    index = next(i for i, m in enumerate(md_body["spec"]["models"]) if m.get("name") == model)
    ops: list[Object] = [
        {"op": "test", "path": f"/spec/models/{index}/name", "value": model},
        {"op": "replace", "path": f"/spec/models/{index}/source", "value": uri},
    ]
    if md_body["metadata"].get("annotations"):
        key = PROPOSAL_ANNOTATION.replace("~", "~0").replace("/", "~1")
        ops.append({"op": "add", "path": f"/metadata/annotations/{key}", "value": record})
    else:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": {PROPOSAL_ANNOTATION: record}})
    return ops


def _outcome(md: ModelDeployment | None, tj: TrainingJob, uri: str) -> tuple[ProposalPhase, str] | None:
    """Where a Proposed job's model stands in the ModelDeployment, or None while it rolls out."""
    if md is None:
        return ProposalPhase.SUPERSEDED, "the ModelDeployment was deleted"
    status = md.status
    serving = status.trained_model if status else None
    if serving is not None and serving.job == tj.metadata.name and serving.uri == uri:
        return ProposalPhase.PROMOTED, f"ModelDeployment {md.metadata.name} serves it"
    rollout = status.rollout if status else None
    if (
        rollout is not None
        and rollout.phase == RolloutPhase.ROLLED_BACK
        and rollout.proposal is not None
        and (rollout.proposal.job, rollout.proposal.uri) == (tj.metadata.name, uri)
    ):
        return ProposalPhase.ROLLED_BACK, rollout.message
    latest = _record(md)
    if (latest.get("job"), latest.get("uri")) != (tj.metadata.name, uri):
        return ProposalPhase.SUPERSEDED, f"ModelDeployment {md.metadata.name} took a later model first"
    return None


async def propose(
    ctx: Context, tj: TrainingJob, current: Proposal | None, now: datetime, events: list[tuple[str, str, str]]
) -> tuple[Proposal | None, float | None]:
    """One step of a succeeded job's proposal: (its status.proposal, when to look again)."""
    output = tj.spec.output
    if output is None or output.propose_to is None:
        return current, None
    if current is not None and current.phase != ProposalPhase.PROPOSED:
        return current, None  # decided
    ns, name = tj.metadata.namespace or "", output.propose_to
    uri = output_model_uri(tj)
    assert uri is not None
    body = await ctx.live(r.MODEL_DEPLOYMENT, ns, name)
    md: ModelDeployment | None = None
    refusal = None
    if body is None:
        refusal = f"ModelDeployment {name} does not exist"
    else:
        try:
            md, _ = read_tolerantly(ModelDeployment, body)  # a newer release's fields are ignored
        except ValidationError as err:
            refusal = f"ModelDeployment {name} is invalid: {err.errors()[0]['msg']}"
    if current is not None:  # Proposed: follow it
        outcome = _outcome(md, tj, uri)
        if outcome is None:
            return current, FOLLOW_SECONDS
        phase, message = outcome
        kind = "Normal" if phase == ProposalPhase.PROMOTED else "Warning"
        events.append((kind, f"Proposal{phase.value}", f"the model proposed to {name}: {message}"))
        return current.model_copy(update={"phase": phase, "message": message, "time": now}), None
    accepted, verdict = (False, refusal) if md is None or refusal else gate(md, tj)
    assert verdict is not None
    proposal = Proposal(
        model_deployment=name, phase=ProposalPhase.REFUSED, message=verdict, uri=uri, time=now
    )
    if not accepted or md is None or body is None:
        events.append(("Warning", "ProposalRefused", f"{uri} not proposed to {name}: {verdict}"))
        if body is not None:
            ctx.announce(body, "Warning", "ProposalRefused", f"TrainingJob {tj.metadata.name}: {verdict}")
        return proposal, None
    proposals = md.spec.rollout.proposals if md.spec.rollout else None
    assert proposals is not None
    record = proposal_record(tj, proposals.model)
    await ctx.kube.json_patch(r.MODEL_DEPLOYMENT, ns, name, _patch(body, proposals.model, uri, record))
    message = f"{uri} proposed to {name}: {verdict}"
    events.append(("Normal", "ModelProposed", message))
    ctx.announce(body, "Normal", "ProposalAccepted", f"TrainingJob {tj.metadata.name}: {message}")
    return proposal.model_copy(update={"phase": ProposalPhase.PROPOSED, "message": message}), FOLLOW_SECONDS
