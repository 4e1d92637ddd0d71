"""The Argo CD health checks (deploy/argocd) on status as the operator writes it.

The Lua runs in Lua 5.1 (Argo CD's gopher-lua implements 5.1) with `obj` as a global and the standard
libraries Argo CD does not offer removed, as Argo CD runs it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from kubeforge.api.trainingjob import TrainingPhase
from kubeforge.controllers.invalid import invalid_status
from kubeforge.status.conditions import set_condition
from kubeforge.status.trainingjob import phase_conditions

ARGOCD = Path(__file__).resolve().parents[2] / "deploy" / "argocd"
SCRIPTS = {
    "ModelDeployment": ARGOCD / "modeldeployment-health.lua",
    "TrainingJob": ARGOCD / "trainingjob-health.lua",
}
NOW = datetime(2026, 1, 1, tzinfo=UTC)
Obj = dict[str, Any]


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


def _conditions(*triples: tuple[str, bool, str, str], generation: int = 1) -> list[Obj]:
    conditions: list[Any] = []
    for type_, value, reason, message in triples:
        conditions = set_condition(conditions, type_, value, reason, message, generation, NOW)
    return [c.wire() for c in conditions]


def _md(*triples: tuple[str, bool, str, str], phase: str, observed: int = 1, generation: int = 1) -> Obj:
    return _obj(
        "ModelDeployment",
        {"observedGeneration": observed, "phase": phase, "conditions": _conditions(*triples)},
        generation,
    )


def _tj(phase: TrainingPhase, reason: str, message: str, observed: int = 1, generation: int = 1) -> Obj:
    conditions = phase_conditions([], phase, reason, message, observed, NOW)
    status = {
        "observedGeneration": observed,
        "phase": phase.value,
        "conditions": [c.wire() for c in conditions],
    }
    return _obj("TrainingJob", status, generation)


READY = ("Ready", True, "AllReplicasReady", "1/1 Triton servers ready")
NOT_READY = ("Ready", False, "NotAllReplicasReady", "0/1 Triton servers ready")
NOT_DEGRADED = ("Degraded", False, "AsExpected", "no pod is stuck")
STUCK = ("Degraded", True, "ImagePullBackOff", "pod x-1: Back-off pulling image")

MODEL_DEPLOYMENTS: dict[str, tuple[Obj, str, str]] = {
    "no status yet": (_obj("ModelDeployment", None), "Progressing", "Waiting for the kubeforge operator"),
    "ready": (_md(READY, NOT_DEGRADED, phase="Ready"), "Healthy", "AllReplicasReady: 1/1"),
    "ready for an older generation": (
        _md(READY, NOT_DEGRADED, phase="Ready", observed=1, generation=2),
        "Progressing",
        "observe generation 2",
    ),
    "status without observedGeneration": (
        _obj("ModelDeployment", {"phase": "Ready", "conditions": _conditions(READY)}),
        "Progressing",
        "observe generation 1",
    ),
    "rolling out": (_md(NOT_READY, NOT_DEGRADED, phase="Progressing"), "Progressing", "NotAllReplicasReady"),
    "a pod is stuck": (_md(NOT_READY, STUCK, phase="Degraded"), "Degraded", "ImagePullBackOff"),
    "stuck while others serve": (_md(READY, STUCK, phase="Degraded"), "Degraded", "ImagePullBackOff"),
    "invalid spec": (
        _obj(
            "ModelDeployment",
            invalid_status(_obj("ModelDeployment", None), "spec.models: too short", "Failed", NOW)[0],
        ),
        "Degraded",
        "InvalidSpec: spec.models: too short",
    ),
}

TRAINING_JOBS: dict[str, tuple[Obj, str, str]] = {
    "no status yet": (_obj("TrainingJob", None), "Progressing", "Waiting for the kubeforge operator"),
    "pending": (
        _obj("TrainingJob", {"observedGeneration": 1, "phase": "Pending"}),
        "Progressing",
        "The TrainingJob is Pending",
    ),
    "running": (
        _tj(TrainingPhase.RUNNING, "WorkersRunning", "2/2 workers running"),
        "Progressing",
        "2/2 workers",
    ),
    "restarting": (
        _tj(TrainingPhase.RESTARTING, "GangRestart", "worker 1 exited 137"),
        "Progressing",
        "exited 137",
    ),
    "succeeded": (_tj(TrainingPhase.SUCCEEDED, "Completed", "all workers exited 0"), "Healthy", "Completed"),
    "succeeded, spec changed since": (
        _tj(TrainingPhase.SUCCEEDED, "Completed", "all workers exited 0", observed=1, generation=2),
        "Progressing",
        "observe generation 2",
    ),
    "failed": (
        _tj(TrainingPhase.FAILED, "BackoffLimitExceeded", "3 restarts"),
        "Degraded",
        "BackoffLimitExceeded",
    ),
    "suspended": (
        _tj(TrainingPhase.SUSPENDED, "Suspended", "spec.runPolicy.suspend is true: workers removed"),
        "Suspended",
        "spec.runPolicy.suspend",
    ),
    "invalid spec": (
        _obj(
            "TrainingJob", invalid_status(_obj("TrainingJob", None), "spec.workers: >= 1", "Failed", NOW)[0]
        ),
        "Degraded",
        "InvalidSpec: spec.workers: >= 1",
    ),
}


@pytest.mark.parametrize("case", MODEL_DEPLOYMENTS)
def test_model_deployment_health(case: str) -> None:
    obj, status, message = MODEL_DEPLOYMENTS[case]
    result = health("ModelDeployment", obj)
    assert result["status"] == status
    assert message in result["message"]


@pytest.mark.parametrize("case", TRAINING_JOBS)
def test_training_job_health(case: str) -> None:
    obj, status, message = TRAINING_JOBS[case]
    result = health("TrainingJob", obj)
    assert result["status"] == status
    assert message in result["message"]


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
