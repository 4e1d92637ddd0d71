"""The failure classifier, attempt observation and phase conditions."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from kubeforge.api.trainingjob import FailurePolicy, TrainingPhase
from kubeforge.status.conditions import get_condition
from kubeforge.status.trainingjob import (
    backoff_seconds,
    classify_failure,
    observe_attempt,
    phase_conditions,
    reported_checkpoint,
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
