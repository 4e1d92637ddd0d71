"""The Argo CD health checks (deploy/argocd) give the verdict Flux's kstatus gives.

The Lua runs in Lua 5.1 (Argo CD's gopher-lua implements 5.1) with `obj` as a global and the standard
libraries Argo CD does not offer removed, as Argo CD runs it.

Each case carries what kstatus (sigs.k8s.io/cli-utils v0.37.2) says of the same object;
e2e/test_kstatus_tool.py feeds every such object to the real library and checks it, so the two
tables cannot drift apart. Cases without a kstatus verdict are status written by operators before
the kstatus conditions (Ready, Reconciling, Stalled), which Argo CD still reads by phase.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from kubeforge.api.trainingjob import TrainingPhase
from kubeforge.controllers.invalid import invalid_status
from kubeforge.status.gitops import ReconcileFailure
from kubeforge.status.trainingjob import gitops_conditions, phase_conditions

ARGOCD = Path(__file__).resolve().parents[2] / "deploy" / "argocd"
SCRIPTS = {
    "ModelDeployment": ARGOCD / "modeldeployment-health.lua",
    "TrainingJob": ARGOCD / "trainingjob-health.lua",
}
NOW = datetime(2026, 1, 1, tzinfo=UTC)
Obj = dict[str, Any]

# Argo CD's health for each kstatus verdict; Suspended is Argo CD's own (kstatus: InProgress).
ARGOCD_FOR_KSTATUS = {"Current": "Healthy", "InProgress": "Progressing", "Failed": "Degraded"}


@dataclass(frozen=True)
class Case:
    obj: Obj
    health: str  # what Argo CD shows
    message: str  # a part of Argo CD's message
    kstatus: str | None = None  # what kstatus computes; None for status of older operators


def health(kind: str, obj: Obj) -> dict[str, str]:
    """What Argo CD shows for `obj`: {"status": ..., "message": ...}."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    for name in ("io", "os", "require", "dofile", "loadfile", "debug", "package"):
        lua.execute(f"{name} = nil")
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(SCRIPTS[kind].read_text())
    return dict(result)


def _obj(kind: str, status: Obj | None, generation: int = 1) -> Obj:
    obj: Obj = {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


def cond(type_: str, status: bool, reason: str, message: str) -> Obj:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": NOW.isoformat().replace("+00:00", "Z"),
        "observedGeneration": 1,
    }


def _status(kind: str, phase: str, *conditions: Obj, observed: int = 1, generation: int = 1) -> Obj:
    """Status as the operator writes it: conditions sorted by type."""
    return _obj(
        kind,
        {
            "observedGeneration": observed,
            "phase": phase,
            "conditions": sorted(conditions, key=lambda c: str(c["type"])),
        },
        generation,
    )


def _md(phase: str, *conditions: Obj, observed: int = 1, generation: int = 1) -> Obj:
    return _status("ModelDeployment", phase, *conditions, observed=observed, generation=generation)


def _tj(phase: str, *conditions: Obj, observed: int = 1, generation: int = 1) -> Obj:
    return _status("TrainingJob", phase, *conditions, observed=observed, generation=generation)


def _kstatus_conditions(
    ready: tuple[bool, str, str],
    reconciling: tuple[bool, str, str] | None = None,
    stalled: tuple[bool, str, str] | None = None,
) -> list[Obj]:
    """Ready, Reconciling and Stalled (the abnormal-true ones False unless given)."""
    return [
        cond("Ready", *ready),
        cond("Reconciling", *(reconciling or (False, "Idle", "nothing in progress"))),
        cond("Stalled", *(stalled or (False, "AsExpected", "nothing stalled"))),
    ]


def _legacy_tj(phase: str, reason: str, message: str, observed: int = 1, generation: int = 1) -> Obj:
    """A TrainingJob status of an operator before Ready/Reconciling/Stalled: one condition per phase."""
    conditions = [cond("Created", True, "WorkersCreated", "the TrainingJob was accepted")]
    for type_ in ("Running", "Restarting", "Succeeded", "Failed", "Suspended"):
        if type_ == phase or type_ in ("Succeeded", "Failed"):
            conditions.append(cond(type_, type_ == phase, reason, message))
    return _tj(phase, *conditions, observed=observed, generation=generation)


def _operator_tj(phase: TrainingPhase, failure: ReconcileFailure | None = None) -> Obj:
    """A TrainingJob status from the operator's own reducers (as its controller chains them)."""
    conditions = phase_conditions([], phase, "Because", f"the TrainingJob is {phase}", 1, NOW)
    conditions = gitops_conditions(
        conditions, phase, "Because", f"the TrainingJob is {phase}", failure, 1, NOW
    )
    status = {"observedGeneration": 1, "phase": phase.value, "conditions": [c.wire() for c in conditions]}
    return _obj("TrainingJob", status)


# -- ModelDeployment ------------------------------------------------------------------------------

READY = cond("Ready", True, "AllReplicasReady", "1/1 Triton servers ready")
NOT_READY = cond("Ready", False, "NotAllReplicasReady", "0/1 Triton servers ready")
NOT_DEGRADED = cond("Degraded", False, "AsExpected", "no pod is stuck")
STUCK = cond("Degraded", True, "ImagePullBackOff", "pod x-1: Back-off pulling image")
UNSCHEDULABLE = cond("Degraded", True, "Unschedulable", "pod x-1: 0/4 nodes have 16 nvidia.com/gpu")
IDLE = cond("Reconciling", False, "Idle", "nothing in progress")
ROLLING_OUT = cond("Reconciling", True, "RollingOut", "1/2 replicas updated")
NOT_STALLED = cond("Stalled", False, "AsExpected", "nothing stalled")
STALLED_UNSCHEDULABLE = cond(
    "Stalled", True, "Unschedulable", "pod x-1: 0/4 nodes have 16 nvidia.com/gpu (for 10m)"
)
STALLED_CONFLICT = cond(
    "Stalled", True, "ChildConflict", "Service ns/x exists and is not controlled by this ModelDeployment"
)

MODEL_DEPLOYMENTS: dict[str, Case] = {
    "no status yet": Case(_obj("ModelDeployment", None), "Progressing", "Waiting for the kubeforge operator"),
    "creating": Case(
        _md("Pending", cond("Ready", False, "Creating", "creating children"), NOT_STALLED,
            cond("Reconciling", True, "Creating", "creating the Deployment")),
        "Progressing", "Creating: creating the Deployment", "InProgress",
    ),
    "rolling out": Case(
        _md("Progressing", NOT_READY, NOT_DEGRADED, ROLLING_OUT, NOT_STALLED),
        "Progressing", "RollingOut: 1/2 replicas updated", "InProgress",
    ),
    "ready": Case(
        _md("Ready", READY, NOT_DEGRADED, IDLE, NOT_STALLED), "Healthy", "AllReplicasReady: 1/1", "Current"
    ),
    "ready for an older generation": Case(
        _md("Ready", READY, NOT_DEGRADED, IDLE, NOT_STALLED, observed=1, generation=2),
        "Progressing", "observe generation 2", "InProgress",
    ),
    "a pod is stuck, within the bound": Case(
        _md("Degraded", NOT_READY, STUCK, IDLE, NOT_STALLED),
        "Progressing", "NotAllReplicasReady", "InProgress",
    ),
    "stuck within the bound while others serve": Case(
        _md("Degraded", READY, STUCK, IDLE, NOT_STALLED), "Healthy", "AllReplicasReady", "Current"
    ),
    "unschedulable past the bound": Case(
        _md("Degraded", NOT_READY, UNSCHEDULABLE, IDLE, STALLED_UNSCHEDULABLE),
        "Degraded", "Unschedulable: pod x-1: 0/4 nodes have 16 nvidia.com/gpu (for 10m)", "Failed",
    ),
    "stalled while others serve": Case(
        _md("Degraded", READY, UNSCHEDULABLE, IDLE, STALLED_UNSCHEDULABLE),
        "Degraded", "Unschedulable", "Failed",
    ),
    "child conflict": Case(
        _md("Failed", cond("Ready", False, "ChildConflict", "Service ns/x is not ours"), IDLE,
            STALLED_CONFLICT),
        "Degraded", "ChildConflict: Service ns/x exists", "Failed",
    ),
    # kstatus decides by the first abnormal condition in the list (sorted by type: Reconciling first)
    "reconciling and stalled": Case(
        _md("Degraded", NOT_READY, ROLLING_OUT, STALLED_UNSCHEDULABLE),
        "Progressing", "RollingOut", "InProgress",
    ),
    "invalid spec, from the operator's refusal": Case(
        _obj(
            "ModelDeployment",
            invalid_status(_obj("ModelDeployment", None), "spec.models: too short", "Failed", NOW)[0],
        ),
        "Degraded",
        "InvalidSpec: spec.models: too short",
        "Failed",
    ),
    # status of operators before Reconciling/Stalled: Degraded and phase decide
    "older operator: ready": Case(_md("Ready", READY, NOT_DEGRADED), "Healthy", "AllReplicasReady: 1/1"),
    "older operator: ready for an older generation": Case(
        _md("Ready", READY, NOT_DEGRADED, observed=1, generation=2), "Progressing", "observe generation 2"
    ),
    "older operator: status without observedGeneration": Case(
        _obj("ModelDeployment", {"phase": "Ready", "conditions": [READY]}),
        "Progressing",
        "observe generation 1",
    ),
    "older operator: rolling out": Case(
        _md("Progressing", NOT_READY, NOT_DEGRADED), "Progressing", "NotAllReplicasReady"
    ),
    "older operator: a pod is stuck": Case(_md("Degraded", NOT_READY, STUCK), "Degraded", "ImagePullBackOff"),
    "older operator: stuck while others serve": Case(
        _md("Degraded", READY, STUCK), "Degraded", "ImagePullBackOff"
    ),
    "older operator: invalid spec": Case(
        _md("Failed", cond("Ready", False, "InvalidSpec", "spec.models: too short"),
            cond("Degraded", True, "InvalidSpec", "spec.models: too short")),
        "Degraded", "InvalidSpec: spec.models: too short",
    ),
}  # fmt: skip

# -- TrainingJob ----------------------------------------------------------------------------------

NOT_SUCCEEDED = (False, "NotSucceeded", "the training has not succeeded")

TRAINING_JOBS: dict[str, Case] = {
    "no status yet": Case(_obj("TrainingJob", None), "Progressing", "Waiting for the kubeforge operator"),
    "pending in the queue": Case(
        _tj("Pending", *_kstatus_conditions(NOT_SUCCEEDED, (True, "Queued", "waiting for Kueue to admit"))),
        "Progressing", "Queued: waiting for Kueue", "InProgress",
    ),
    "running": Case(
        _tj("Running", *_kstatus_conditions(NOT_SUCCEEDED, (True, "WorkersRunning", "2/2 workers running")),
            cond("Running", True, "WorkersRunning", "2/2 workers running")),
        "Progressing", "2/2 workers", "InProgress",
    ),
    "restarting": Case(
        _tj("Restarting", *_kstatus_conditions(NOT_SUCCEEDED, (True, "GangRestart", "worker 1 exited 137"))),
        "Progressing", "exited 137", "InProgress",
    ),
    "succeeded": Case(
        _tj("Succeeded", *_kstatus_conditions((True, "Completed", "all workers exited 0"))),
        "Healthy", "Completed: all workers exited 0", "Current",
    ),
    "succeeded, spec changed since": Case(
        _tj("Succeeded", *_kstatus_conditions((True, "Completed", "all workers exited 0")),
            observed=1, generation=2),
        "Progressing", "observe generation 2", "InProgress",
    ),
    "failed": Case(
        _tj("Failed", *_kstatus_conditions(
            (False, "BackoffLimitExceeded", "3 restarts"),
            stalled=(True, "BackoffLimitExceeded", "3 restarts"))),
        "Degraded", "BackoffLimitExceeded: 3 restarts", "Failed",
    ),
    "child conflict": Case(
        _tj("Pending", *_kstatus_conditions(
            (False, "ChildConflict", "Service ns/x-workers is not ours"),
            stalled=(True, "ChildConflict", "Service ns/x-workers is not controlled by this TrainingJob"))),
        "Degraded", "ChildConflict: Service ns/x-workers", "Failed",
    ),
    "permanent API error": Case(
        _tj("Running", *_kstatus_conditions(
            (False, "Forbidden", "jobs.batch is forbidden"),
            stalled=(True, "Forbidden", "jobs.batch \"x-0\" is forbidden: exceeded quota"))),
        "Degraded", "Forbidden: jobs.batch", "Failed",
    ),
    "suspended": Case(
        _tj("Suspended", *_kstatus_conditions((False, "Suspended", "spec.runPolicy.suspend is true")),
            cond("Suspended", True, "Suspended", "spec.runPolicy.suspend is true: workers removed")),
        "Suspended", "spec.runPolicy.suspend", "InProgress",
    ),
    "invalid spec, from the operator's refusal": Case(
        _obj("TrainingJob",
             invalid_status(_obj("TrainingJob", None), "spec.workers: >= 1", "Failed", NOW)[0]),
        "Degraded", "InvalidSpec: spec.workers: >= 1", "Failed",
    ),
    **{
        f"operator's reducers: {phase}": Case(
            _operator_tj(phase), health, f"Because: the TrainingJob is {phase}", verdict
        )
        for phase, health, verdict in (
            (TrainingPhase.PENDING, "Progressing", "InProgress"),
            (TrainingPhase.RUNNING, "Progressing", "InProgress"),
            (TrainingPhase.RESTARTING, "Progressing", "InProgress"),
            (TrainingPhase.SUCCEEDED, "Healthy", "Current"),
            (TrainingPhase.FAILED, "Degraded", "Failed"),
            (TrainingPhase.SUSPENDED, "Suspended", "InProgress"),
        )
    },
    "operator's reducers: child conflict while running": Case(
        _operator_tj(TrainingPhase.RUNNING, ReconcileFailure("ChildConflict", "Service x-workers: not ours")),
        "Degraded", "ChildConflict: Service x-workers: not ours", "Failed",
    ),
    # status of operators before Ready/Reconciling/Stalled: the phase (or its condition) decides
    "older operator: pending": Case(
        _obj("TrainingJob", {"observedGeneration": 1, "phase": "Pending"}),
        "Progressing", "The TrainingJob is Pending",
    ),
    "older operator: running": Case(
        _legacy_tj("Running", "WorkersRunning", "2/2 workers running"), "Progressing", "2/2 workers"
    ),
    "older operator: restarting": Case(
        _legacy_tj("Restarting", "GangRestart", "worker 1 exited 137"), "Progressing", "exited 137"
    ),
    "older operator: succeeded": Case(
        _legacy_tj("Succeeded", "Completed", "all workers exited 0"), "Healthy", "Completed"
    ),
    "older operator: succeeded, spec changed since": Case(
        _legacy_tj("Succeeded", "Completed", "all workers exited 0", observed=1, generation=2),
        "Progressing", "observe generation 2",
    ),
    "older operator: failed": Case(
        _legacy_tj("Failed", "BackoffLimitExceeded", "3 restarts"), "Degraded", "BackoffLimitExceeded"
    ),
    "older operator: suspended": Case(
        _legacy_tj("Suspended", "Suspended", "spec.runPolicy.suspend is true: workers removed"),
        "Suspended", "spec.runPolicy.suspend",
    ),
}  # fmt: skip

CASES = {"ModelDeployment": MODEL_DEPLOYMENTS, "TrainingJob": TRAINING_JOBS}


@pytest.mark.parametrize("case", MODEL_DEPLOYMENTS)
def test_model_deployment_health(case: str) -> None:
    expected = MODEL_DEPLOYMENTS[case]
    result = health("ModelDeployment", expected.obj)
    assert result["status"] == expected.health, result
    assert expected.message in result["message"]


@pytest.mark.parametrize("case", TRAINING_JOBS)
def test_training_job_health(case: str) -> None:
    expected = TRAINING_JOBS[case]
    result = health("TrainingJob", expected.obj)
    assert result["status"] == expected.health, result
    assert expected.message in result["message"]


def test_argocd_agrees_with_kstatus_on_every_kstatus_case() -> None:
    """The kstatus column (checked against the real library in e2e) maps to the health column."""
    for kind, cases in CASES.items():
        for name, case in cases.items():
            if case.kstatus is not None:
                allowed = {ARGOCD_FOR_KSTATUS[case.kstatus]}
                if case.kstatus == "InProgress":
                    allowed.add("Suspended")  # Argo CD's own; kstatus has no such verdict
                assert case.health in allowed, f"{kind} {name}: kstatus {case.kstatus}, Argo CD {case.health}"


def test_argocd_cm_snippet_carries_the_same_lua() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm-health.yaml").read_text())
    assert (cm["apiVersion"], cm["kind"], cm["metadata"]["name"]) == ("v1", "ConfigMap", "argocd-cm")
    assert set(cm["data"]) == {f"resource.customizations.health.kubeforge.io_{kind}" for kind in SCRIPTS}
    for kind, script in SCRIPTS.items():
        assert cm["data"][f"resource.customizations.health.kubeforge.io_{kind}"] == script.read_text(), kind


def test_application_renders_this_chart() -> None:
    app = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    assert app["spec"]["source"]["path"] == "charts/kubeforge"
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]
