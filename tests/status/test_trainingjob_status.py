"""The failure classifier, attempt observation and phase conditions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubeforge.api.trainingjob import FailurePolicy, TrainingPhase
from kubeforge.status.conditions import get_condition
from kubeforge.status.gitops import ReconcileFailure
from kubeforge.status.trainingjob import (
    backoff_seconds,
    classify_failure,
    earliest_failure,
    gitops_conditions,
    job_failure,
    observe_attempt,
    phase_conditions,
    reported_checkpoint,
    reported_validation,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def _failed(code: int | None, index: int = 1, **status: Any) -> dict[str, Any]:
    cs = (
        []
        if code is None
        else [{"name": "worker", "state": {"terminated": {"exitCode": code, "reason": "Error"}}}]
    )
    return {
        "metadata": {
            "name": f"job-0-{index}",
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {"phase": "Failed", "containerStatuses": cs, **status},
    }


@pytest.mark.parametrize(
    ("code", "policy", "retryable"),
    [
        (137, FailurePolicy(), True),
        (143, FailurePolicy(), True),
        (1, FailurePolicy(), False),
        (127, FailurePolicy(), False),
        (1, FailurePolicy(retryable_exit_codes=[1, 137]), True),
        (143, FailurePolicy(retryable_exit_codes=[137]), False),
    ],
)
def test_exit_code_classification(code: int, policy: FailurePolicy, retryable: bool) -> None:
    failure = classify_failure(_failed(code), policy, NOW)
    assert (failure.exit_code, failure.worker, failure.retryable) == (code, 1, retryable)


def test_eviction_is_a_retryable_preemption() -> None:
    failure = classify_failure(_failed(None, reason="Evicted", message="node pressure"), FailurePolicy(), NOW)
    assert failure.retryable and failure.reason == "Evicted"
    disrupted = _failed(
        143, conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}]
    )
    assert classify_failure(disrupted, FailurePolicy(retryable_exit_codes=[]), NOW).retryable


def test_backoff_doubles_and_caps() -> None:
    policy = FailurePolicy(backoff_seconds=10)
    assert [backoff_seconds(policy, n) for n in (1, 2, 3, 10)] == [10, 20, 40, 600]


def test_attempt_observation() -> None:
    running = {"metadata": {"name": "a"}, "status": {"phase": "Running", "startTime": "2026-11-28T11:00:00Z"}}
    job = {
        "spec": {"suspend": False},
        "status": {"active": 2, "conditions": [{"type": "Complete", "status": "True"}]},
    }
    obs = observe_attempt(job, [running, dict(running)], workers=2)
    assert obs.complete and obs.running == 2 and obs.started is not None
    queued = observe_attempt({"spec": {"suspend": True}}, [], workers=2)
    assert queued.suspended_by_queue and queued.started is None


def test_phase_conditions_keep_one_phase_true() -> None:
    conditions = phase_conditions([], TrainingPhase.RUNNING, "AllWorkersRunning", "2/2", 1, NOW)
    conditions = phase_conditions(conditions, TrainingPhase.SUSPENDED, "Suspended", "suspended", 2, NOW)
    conditions = phase_conditions(conditions, TrainingPhase.RUNNING, "AllWorkersRunning", "2/2", 3, NOW)
    assert get_condition(conditions, "Running").status == "True"  # type: ignore[union-attr]
    assert get_condition(conditions, "Suspended").status == "False"  # type: ignore[union-attr]
    assert get_condition(conditions, "Succeeded").status == "False"  # type: ignore[union-attr]
    assert get_condition(conditions, "Created").status == "True"  # type: ignore[union-attr]
    assert all(c.observed_generation == 3 for c in conditions if c.type != "Created")


def _terminated_with(message: str, index: int = 0) -> dict[str, Any]:
    state = {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}
    return {
        "metadata": {"name": f"w-{index}"},
        "status": {"phase": "Succeeded", "containerStatuses": [{"name": "worker", "state": state}]},
    }


def test_checkpoint_reported_in_the_termination_message() -> None:
    doc = '{"state":"succeeded","step":500,"checkpoint":{"step":500,"path":"/c/ckpt-00000500.pt","time":"2026-11-28T12:00:00Z","loss":0.1}}'
    older = '{"state":"running","step":300,"checkpoint":{"step":300,"path":"/c/ckpt-00000300.pt","time":"2026-11-28T11:00:00Z","loss":0.2}}'
    info = reported_checkpoint([_terminated_with(older, 1), _terminated_with(doc)])
    assert info is not None and (info.step, info.path, info.loss) == (500, "/c/ckpt-00000500.pt", 0.1)
    assert reported_checkpoint([_terminated_with("Traceback (most recent call last): ...")]) is None
    assert reported_checkpoint([_terminated_with('{"state": "running", "checkpoint": null}')]) is None


def test_validation_reported_in_the_termination_message() -> None:
    newer = '{"state":"succeeded","step":100,"validation":{"step":100,"loss":2.47,"perplexity":11.8}}'
    older = '{"state":"running","step":60,"validation":{"step":50,"loss":2.65,"perplexity":14.2}}'
    info = reported_validation([_terminated_with(newer), _terminated_with(older, 1)])
    assert info is not None and (info.step, info.loss, info.perplexity) == (100, 2.47, 11.8)
    assert reported_validation([_terminated_with('{"state":"running","validation":null}')]) is None
    assert reported_validation([_terminated_with("not json")]) is None


def test_the_earliest_failure_is_the_cause() -> None:
    def at(name: str, index: int, finished: str) -> dict[str, Any]:
        pod = _failed(1, index=index)
        pod["metadata"]["name"] = name
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = finished
        return pod

    follower = at("job-0-0", 0, "2026-11-28T12:00:09Z")  # rank 0 failed because rank 1 died first
    cause = at("job-0-1", 1, "2026-11-28T12:00:02Z")
    assert earliest_failure([follower, cause]) is cause


def test_in_the_same_second_a_worker_that_failed_comes_before_one_that_was_stopped() -> None:
    """Rank 1 is OOM-killed (137); the Job fails and its controller deletes rank 0, which exits 143,
    within the same second: the cause is rank 1, although rank 0 sorts first by index."""

    def at(index: int, exit_code: int, deleting: bool) -> dict[str, Any]:
        pod = _failed(exit_code, index=index)
        pod["metadata"]["name"] = f"job-0-{index}"
        pod["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"] = "2026-11-28T12:00:02Z"
        if deleting:
            pod["metadata"]["deletionTimestamp"] = "2026-11-28T12:00:02Z"
        return pod

    stopped, cause = at(0, 143, deleting=True), at(1, 137, deleting=False)
    assert earliest_failure([stopped, cause]) is cause
    assert earliest_failure([at(0, 143, deleting=False), cause]) is cause  # SIGTERM alone tells it too
    assert earliest_failure([at(0, 137, deleting=True), cause]) is cause  # and so does the deletion
    # with no other clue, the lower index is first, as before
    assert (
        earliest_failure([at(1, 1, deleting=False), at(0, 1, deleting=False)])["metadata"]["name"]
        == "job-0-0"
    )


def test_a_kubelet_admission_rejection_is_retryable() -> None:
    pod = _failed(
        None, reason="UnexpectedAdmissionError", message="Allocate failed due to no healthy devices"
    )
    failure = classify_failure(pod, FailurePolicy(), NOW)
    assert failure.retryable and failure.exit_code is None
    assert failure.reason == "UnexpectedAdmissionError"
    assert "rejected by its node" in (failure.message or "")


def test_a_failed_job_whose_pod_vanished_is_still_a_failure() -> None:
    job = {
        "metadata": {"name": "j-0"},
        "spec": {},
        "status": {
            "failed": 1,
            "conditions": [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}],
        },
    }
    obs = observe_attempt(job, [], 2)
    assert obs.failed_pods == [] and obs.job_failure is not None
    failure = job_failure(job, obs.job_failure, NOW)
    assert failure.retryable and failure.reason == "BackoffLimitExceeded"


@pytest.mark.parametrize(
    ("phase", "ready", "reconciling", "stalled"),
    [
        (TrainingPhase.PENDING, "False", "True", "False"),
        (TrainingPhase.RUNNING, "False", "True", "False"),
        (TrainingPhase.RESTARTING, "False", "True", "False"),
        (TrainingPhase.SUSPENDED, "False", "False", "False"),
        (TrainingPhase.SUCCEEDED, "True", "False", "False"),
        (TrainingPhase.FAILED, "False", "False", "True"),
    ],
)
def test_gitops_conditions_follow_the_phase(
    phase: TrainingPhase, ready: str, reconciling: str, stalled: str
) -> None:
    conditions = gitops_conditions([], phase, "Reason", "message", None, 3, NOW)
    got = {c.type: c.status.value for c in conditions}
    assert got == {"Ready": ready, "Reconciling": reconciling, "Stalled": stalled}


def test_a_failure_stalls_a_running_job() -> None:
    failure = ReconcileFailure("ChildConflict", "Service ns/x-workers already exists")
    conditions = gitops_conditions([], TrainingPhase.RUNNING, "AllWorkersRunning", "", failure, 3, NOW)
    got = {c.type: (c.status.value, c.reason) for c in conditions}
    assert got["Stalled"] == ("True", "ChildConflict") and got["Reconciling"][0] == "False"
