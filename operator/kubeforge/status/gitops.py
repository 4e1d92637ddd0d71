"""The conditions GitOps tools compute health from (kstatus: Flux, kpt, cli-utils; Argo CD's checks).

kstatus (sigs.k8s.io/cli-utils v0.37.2, status.Compute) reads, on a custom resource:
`observedGeneration` behind `generation` -> InProgress; then the first `Reconciling=True` ->
InProgress or `Stalled=True` -> Failed; then `Ready`: True -> Current, False -> InProgress;
no Ready -> Current. Reconciling and Stalled are "abnormal-true" conditions: present and False when
all is well. So: Current only when Ready, Failed only when Stalled (a suspended TrainingJob is
InProgress: not Ready, nothing failed). `Ready` is also what `kubectl wait` and people look for.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from kubeforge.api.common import Condition
from kubeforge.status.conditions import set_condition


@dataclass(frozen=True)
class ReconcileFailure:
    """Why a reconcile cannot progress without a change: a child name clash, a denial, an invalid child."""

    reason: str  # ChildConflict, Forbidden, Invalid, ...
    message: str
    # it resolves by itself (a predecessor's child the garbage collector is removing): in status,
    # but in progress rather than stalled, and looked at again soon rather than backed off
    waiting: bool = False


@dataclass(frozen=True)
class Verdict:
    """One condition's value: True/False, a CamelCase reason and a message."""

    status: bool
    reason: str
    message: str


def kstatus_conditions(
    conditions: list[Condition],
    *,
    ready: Verdict,
    reconciling: Verdict,
    stalled: Verdict,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """`conditions` with Ready, Reconciling and Stalled set (never Reconciling and Stalled both True)."""
    assert not (reconciling.status and stalled.status), "an object is either progressing or stalled"
    for type_, verdict in (("Ready", ready), ("Reconciling", reconciling), ("Stalled", stalled)):
        conditions = set_condition(
            conditions, type_, verdict.status, verdict.reason, verdict.message, generation, now
        )
    return conditions
