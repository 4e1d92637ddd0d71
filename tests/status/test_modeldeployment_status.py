"""Observed children in, ModelDeployment status out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kubeforge.api import ModelDeployment
from kubeforge.api.modeldeployment import ModelState
from kubeforge.status.conditions import get_condition
from kubeforge.status.gitops import ReconcileFailure
from kubeforge.status.modeldeployment import AutoscalerObservation, Observed, compute_status
from tests.data.invalid_specs import example

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _md(replicas: int = 2) -> ModelDeployment:
    doc = example("model-deployment.yaml")
    doc["metadata"].update(uid="u", generation=4, namespace="ns")
    doc["spec"]["replicas"] = replicas
    return ModelDeployment.model_validate(doc)


def _deployment(
    ready: int, updated: int, replicas: int = 2, generation: int = 1, observed: int = 1
) -> dict[str, Any]:
    return {
        "metadata": {"name": "resnet50", "generation": generation},
        "status": {
            "observedGeneration": observed,
            "replicas": replicas,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "conditions": [
                {
                    "type": "Available",
                    "status": "True" if ready else "False",
                    "reason": "MinimumReplicasAvailable",
                    "message": "ok",
                }
            ],
        },
    }


def _pod(name: str, ready: bool = True, **status: Any) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True" if ready else "False"}]
    conditions += status.pop("conditions", [])
    return {"metadata": {"name": name}, "status": {"podIP": "127.0.0.1", "conditions": conditions, **status}}


def _observed(dep: dict[str, Any] | None, pods: list[dict[str, Any]], **kw: Any) -> Observed:
    return Observed(deployment=dep, pods=pods, endpoints={"http": "h", "grpc": "g", "metrics": "m"}, **kw)


def test_all_ready_is_ready() -> None:
    status, transitions = compute_status(
        _md(), _observed(_deployment(2, 2), [_pod("a"), _pod("b")]), None, NOW
    )
    assert status.phase == "Ready"
    assert status.ready == "2/2" and status.observed_generation == 4
    ready = get_condition(status.conditions, "Ready")
    assert ready is not None and ready.status == "True" and ready.observed_generation == 4
    assert status.selector == "kubeforge.io/owner-kind=modeldeployment,kubeforge.io/owner-name=resnet50"
    assert [t.reason for t in transitions] == ["AllReplicasReady"]


def test_streaming_urls_reach_the_status() -> None:
    urls = ["http://resnet50.ns.svc.cluster.local:8000/v2/models/lm/generate_stream"]
    observed = Observed(
        deployment=_deployment(2, 2),
        pods=[],
        endpoints={"http": "h", "grpc": "g", "metrics": "m", "generate_stream": urls},
    )
    status, _ = compute_status(_md(), observed, None, NOW)
    assert status.endpoints is not None and status.endpoints.generate_stream == urls
    assert status.wire()["endpoints"]["generateStream"] == urls


def test_rollout_in_progress_is_progressing_not_ready() -> None:
    status, _ = compute_status(_md(), _observed(_deployment(2, 1), [_pod("a"), _pod("b")]), None, NOW)
    assert status.phase == "Progressing"
    progressing = get_condition(status.conditions, "Progressing")
    assert progressing is not None and progressing.status == "True" and progressing.reason == "RollingOut"


def test_stale_deployment_generation_is_not_ready() -> None:
    status, _ = compute_status(_md(), _observed(_deployment(2, 2, generation=2, observed=1), []), None, NOW)
    assert get_condition(status.conditions, "Ready").status == "False"  # type: ignore[union-attr]


def test_unschedulable_pod_is_degraded_with_the_scheduler_message() -> None:
    message = "0/7 nodes are available: 7 Insufficient nvidia.com/gpu."
    pending = _pod(
        "b",
        ready=False,
        phase="Pending",
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}
        ],
    )
    status, transitions = compute_status(_md(), _observed(_deployment(1, 2), [_pod("a"), pending]), None, NOW)
    degraded = get_condition(status.conditions, "Degraded")
    assert degraded is not None and (degraded.status, degraded.reason) == ("True", "Unschedulable")
    assert message in degraded.message
    assert status.phase == "Degraded"
    assert any(t.type == "Warning" and t.reason == "Unschedulable" for t in transitions)


def _waiting(reason: str, last: dict[str, Any] | None = None) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "triton", "state": {"waiting": {"reason": reason, "message": "detail"}}}
    if last:
        cs["lastState"] = {"terminated": last}
    return _pod("b", ready=False, containerStatuses=[cs])


def test_image_pull_crashloop_and_oom_reasons() -> None:
    cases = {
        "ImagePullBackOff": _waiting("ErrImagePull"),
        "CrashLoopBackOff": _waiting("CrashLoopBackOff", {"exitCode": 1, "reason": "Error"}),
        "OOMKilled": _waiting("CrashLoopBackOff", {"exitCode": 137, "reason": "OOMKilled"}),
    }
    for reason, pod in cases.items():
        status, _ = compute_status(_md(), _observed(_deployment(1, 2), [_pod("a"), pod]), None, NOW)
        assert get_condition(status.conditions, "Degraded").reason == reason  # type: ignore[union-attr]


def test_transition_time_moves_only_with_the_status() -> None:
    first, _ = compute_status(_md(), _observed(_deployment(2, 2), [_pod("a"), _pod("b")]), None, NOW)
    later = NOW + timedelta(minutes=5)
    second, transitions = compute_status(
        _md(), _observed(_deployment(2, 2), [_pod("a"), _pod("b")]), first, later
    )
    assert get_condition(second.conditions, "Ready").last_transition_time == NOW  # type: ignore[union-attr]
    assert transitions == []
    assert second == first


def test_models_ready_never_blocks_ready_and_reports_per_model_state() -> None:
    models = [ModelState(name="resnet50", state="UNAVAILABLE", reason="load failed")]
    status, _ = compute_status(
        _md(), _observed(_deployment(2, 2), [_pod("a"), _pod("b")], model_states=models), None, NOW
    )
    assert get_condition(status.conditions, "Ready").status == "True"  # type: ignore[union-attr]
    models_ready = get_condition(status.conditions, "ModelsReady")
    assert (
        models_ready is not None and models_ready.status == "False" and "load failed" in models_ready.message
    )
    unknown, _ = compute_status(
        _md(), _observed(_deployment(2, 2), [_pod("a")], model_probe_error="timeout"), None, NOW
    )
    assert get_condition(unknown.conditions, "ModelsReady").status == "Unknown"  # type: ignore[union-attr]


def test_autoscaling_mirrors_hpa_conditions_and_missing_keda() -> None:
    hpa = {
        "status": {
            "desiredReplicas": 3,
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "message": "ok"},
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "reason": "FailedGetPodsMetric",
                    "message": "unable to get metric",
                },
            ],
        }
    }
    status, _ = compute_status(
        _md(), _observed(_deployment(2, 2), [], autoscaler=AutoscalerObservation("hpa", hpa)), None, NOW
    )
    cond = get_condition(status.conditions, "AutoscalingReady")
    assert cond is not None and (cond.status, cond.reason) == ("False", "FailedGetPodsMetric")
    assert status.desired_replicas == 3
    keda = AutoscalerObservation("keda", missing_reason="KedaNotInstalled", missing_message="install KEDA")
    status, _ = compute_status(_md(), _observed(_deployment(2, 2), [], autoscaler=keda), None, NOW)
    cond = get_condition(status.conditions, "AutoscalingReady")
    assert cond is not None and (cond.status, cond.reason) == ("False", "KedaNotInstalled")


def test_scaled_to_zero_is_ready() -> None:
    status, _ = compute_status(_md(replicas=0), _observed(_deployment(0, 0, replicas=0), []), None, NOW)
    assert get_condition(status.conditions, "Ready").reason == "ScaledToZero"  # type: ignore[union-attr]


# -- availability and GitOps health (kstatus: Reconciling / Stalled) ------------------------------


def _conditions(status: Any) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status.value, c.reason) for c in status.conditions}


def test_not_available_while_no_replica_is_ready() -> None:
    # maxUnavailable 1 with one replica: the Deployment calls itself Available at 0 ready; we do not
    dep = _deployment(0, 1, replicas=1)
    dep["status"]["conditions"][0]["status"] = "True"
    status, _ = compute_status(_md(replicas=1), _observed(dep, [_pod("a", ready=False)]), None, NOW)
    assert _conditions(status)["Available"] == ("False", "NoReplicaReady")
    one, _ = compute_status(
        _md(replicas=2), _observed(_deployment(1, 2), [_pod("a"), _pod("b", False)]), None, NOW
    )
    assert _conditions(one)["Available"] == ("True", "ReplicasReady")


def test_rolling_out_is_reconciling_and_ready_is_neither() -> None:
    rolling, _ = compute_status(_md(), _observed(_deployment(1, 1), [_pod("a"), _pod("b", False)]), None, NOW)
    assert _conditions(rolling)["Reconciling"] == ("True", "RollingOut")
    assert _conditions(rolling)["Stalled"][0] == "False"
    ready, _ = compute_status(_md(), _observed(_deployment(2, 2), [_pod("a"), _pod("b")]), rolling, NOW)
    assert {t: _conditions(ready)[t][0] for t in ("Ready", "Reconciling", "Stalled")} == {
        "Ready": "True",
        "Reconciling": "False",
        "Stalled": "False",
    }


def test_degraded_past_the_bound_is_stalled_once() -> None:
    unschedulable = _pod(
        "a",
        ready=False,
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/7 nodes"}
        ],
    )
    observed = _observed(_deployment(0, 2), [unschedulable])
    first, _ = compute_status(_md(), observed, None, NOW, stall_seconds=60)
    assert _conditions(first)["Degraded"] == ("True", "Unschedulable")
    assert _conditions(first)["Reconciling"][0] == "True"  # still within the bound: in progress
    later, transitions = compute_status(_md(), observed, first, NOW + timedelta(seconds=61), stall_seconds=60)
    assert _conditions(later)["Stalled"] == ("True", "Unschedulable")
    assert _conditions(later)["Reconciling"][0] == "False"
    assert [(t.type, t.reason) for t in transitions] == [("Warning", "Unschedulable")]
    again, transitions = compute_status(
        _md(), observed, later, NOW + timedelta(seconds=200), stall_seconds=60
    )
    assert again.conditions == later.conditions and transitions == []  # nothing new: no write, no Event


def test_a_child_conflict_is_failed_with_the_clashing_object_named_once() -> None:
    failure = ReconcileFailure("ChildConflict", "Service ns/resnet50 already exists and is not controlled")
    observed = _observed(None, [], failure=failure)
    status, transitions = compute_status(_md(), observed, None, NOW)
    assert status.phase == "Failed"
    assert _conditions(status)["Ready"] == ("False", "ChildConflict")
    assert _conditions(status)["Stalled"] == ("True", "ChildConflict")
    assert [(t.type, t.reason, t.message) for t in transitions] == [
        ("Warning", "ChildConflict", failure.message)
    ]
    _, again = compute_status(_md(), observed, status, NOW)
    assert again == []  # one Warning per distinct error, not per retry
    other = ReconcileFailure("ChildConflict", "PodDisruptionBudget ns/resnet50 already exists")
    _, distinct = compute_status(_md(), _observed(None, [], failure=other), status, NOW)
    assert [t.message for t in distinct] == [other.message]


# -- the autoscaling loop: absent metrics, scale to zero, cold start -------------------------------


def _hpa_failing_since(since: datetime) -> dict[str, Any]:
    return {
        "status": {
            "conditions": [
                {"type": "AbleToScale", "status": "True", "reason": "SucceededGetScale", "message": "ok"},
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "reason": "FailedGetPodsMetric",
                    "message": "unable to get metric nv_queue_time_us: no metrics returned",
                    "lastTransitionTime": since.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
            ]
        }
    }


def test_a_metric_absent_past_the_bound_says_so() -> None:
    observed = _observed(
        _deployment(2, 2),
        [],
        autoscaler=AutoscalerObservation("hpa", _hpa_failing_since(NOW - timedelta(seconds=30))),
    )
    early, _ = compute_status(_md(), observed, None, NOW, metric_absent_seconds=60)
    assert _conditions(early)["AutoscalingReady"] == ("False", "FailedGetPodsMetric")  # may still come
    late, _ = compute_status(_md(), observed, early, NOW + timedelta(seconds=31), metric_absent_seconds=60)
    cond = get_condition(late.conditions, "AutoscalingReady")
    assert cond is not None and (cond.status, cond.reason) == ("False", "MetricAbsent")
    assert "prometheus-adapter-rules.yaml" in cond.message and "no metrics returned" in cond.message


def test_scaled_to_zero_has_its_phase_and_reads_0_of_0() -> None:
    status, _ = compute_status(_md(replicas=0), _observed(_deployment(0, 0, replicas=0), []), None, NOW)
    assert (status.phase, status.ready) == ("ScaledToZero", "0/0")
    assert _conditions(status)["Available"] == ("False", "ScaledToZero")


def test_a_scale_up_from_zero_records_the_cold_start() -> None:
    zero, _ = compute_status(_md(replicas=0), _observed(_deployment(0, 0, replicas=0), []), None, NOW)
    woken, _ = compute_status(
        _md(replicas=1), _observed(_deployment(0, 0, replicas=1), [_pod("a", ready=False)]), zero, NOW
    )
    assert woken.cold_start is not None and woken.cold_start.activated_at == NOW
    assert woken.cold_start.seconds is None
    ready_at = NOW + timedelta(seconds=12)
    ready, transitions = compute_status(
        _md(replicas=1), _observed(_deployment(1, 1, replicas=1), [_pod("a")]), woken, ready_at
    )
    assert ready.cold_start is not None and ready.cold_start.seconds == 12.0
    assert ("Normal", "ColdStart") in [(t.type, t.reason) for t in transitions]
    again, transitions = compute_status(
        _md(replicas=1), _observed(_deployment(1, 1, replicas=1), [_pod("a")]), ready, ready_at
    )
    assert again.cold_start == ready.cold_start and transitions == []  # recorded once


def test_waiting_for_a_predecessors_child_is_in_progress_not_stalled() -> None:
    waiting = ReconcileFailure(
        "WaitingForPredecessor", "Service ns/resnet50: controlled by ...", waiting=True
    )
    status, _ = compute_status(_md(), _observed(None, [], failure=waiting), None, NOW)
    assert status.phase == "Progressing"
    conditions = {c.type: (c.status, c.reason) for c in status.conditions or []}
    assert conditions["Ready"] == ("False", "WaitingForPredecessor")
    assert conditions["Reconciling"] == ("True", "WaitingForPredecessor")
    assert conditions["Stalled"][0] == "False"


def test_a_quota_refusing_the_pods_is_degraded_with_its_words() -> None:
    dep = _deployment(0, 0, replicas=0)
    refusal = 'pods "resnet50-x" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=1'
    dep["status"]["conditions"].append(
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": refusal}
    )
    status, _ = compute_status(_md(), _observed(dep, []), None, NOW)
    degraded = get_condition(status.conditions, "Degraded")
    ready = get_condition(status.conditions, "Ready")
    assert degraded is not None and (degraded.status, degraded.reason) == ("True", "FailedCreate")
    assert refusal in degraded.message
    assert ready is not None and ready.reason == "FailedCreate"
    # and it leaves with the condition
    dep["status"]["conditions"].pop()
    status, _ = compute_status(_md(), _observed(dep, []), status, NOW)
    degraded = get_condition(status.conditions, "Degraded")
    assert degraded is not None and degraded.status == "False"


def test_a_deferred_operator_rollout_is_named_and_leaves() -> None:
    observed = _observed(_deployment(2, 2), [_pod("a"), _pod("b")], rollout_deferred="waits for ns/other")
    status, _ = compute_status(_md(), observed, None, NOW)
    deferred = get_condition(status.conditions, "RolloutDeferred")
    assert deferred is not None and deferred.status == "True" and "ns/other" in deferred.message
    assert status.phase == "Ready"  # it serves with its template meanwhile
    status, _ = compute_status(_md(), _observed(_deployment(2, 2), [_pod("a"), _pod("b")]), status, NOW)
    assert get_condition(status.conditions, "RolloutDeferred") is None
