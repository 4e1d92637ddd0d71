"""status.cache and the conditions of a ModelDeployment whose model cache fills, is ready or failed."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from kubeforge.api import ModelDeployment
from kubeforge.api.modeldeployment import CacheState
from kubeforge.status.cache import CacheObservation, needs_pod, retry_delay
from kubeforge.status.conditions import get_condition
from kubeforge.status.modeldeployment import Observed, compute_status
from tests.data.invalid_specs import example

NOW = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
SUMMARY = {"bytes": 1234, "digest": "sha256:abc", "completedAt": "2026-11-29T09:59:00Z"}


def _md() -> ModelDeployment:
    doc = example("model-deployment.yaml")
    doc["metadata"].update(uid="u", generation=2, namespace="ns")
    doc["spec"]["cache"] = {"size": "10Gi"}
    return ModelDeployment.model_validate(doc)


def _job(condition: str | None, **extra: Any) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True", **extra}] if condition else []
    return {"metadata": {"name": "fill", "uid": "j"}, "status": {"conditions": conditions}}


def _pod(exit_code: int, message: str) -> dict[str, Any]:
    terminated = {"exitCode": exit_code, "message": message}
    return {"status": {"containerStatuses": [{"name": "fill", "state": {"terminated": terminated}}]}}


def _obs(
    job: dict[str, Any] | None,
    pod: dict[str, Any] | None = None,
    retries: int = 0,
    retry_at: datetime | None = None,
) -> CacheObservation:
    return CacheObservation(
        claim_name="c",
        key="k1",
        job_name="demo-fill-k1",
        job=job,
        pod=pod,
        retries=retries,
        retry_at=retry_at,
    )


def _status(obs: CacheObservation, previous: Any = None, dep: dict[str, Any] | None = None) -> Any:
    observed = Observed(deployment=dep, pods=[], endpoints={}, cache=obs)
    return compute_status(_md(), observed, previous, NOW)


def _cond(status: Any, type_: str) -> tuple[str, str]:
    c = get_condition(status.conditions, type_)
    assert c is not None
    return c.status.value, c.reason


def test_filling_is_progressing_and_not_ready_without_a_deployment() -> None:
    status, transitions = _status(_obs(_job(None)))
    assert status.cache.state == CacheState.FILLING
    assert (status.cache.claim_name, status.cache.key, status.cache.job) == ("c", "k1", "demo-fill-k1")
    assert _cond(status, "Ready") == ("False", "CacheFilling")
    assert _cond(status, "Progressing") == ("True", "CacheFilling")
    assert _cond(status, "Available") == ("False", "CacheFilling")
    assert _cond(status, "Stalled")[0] == "False"
    assert status.phase.value == "Progressing"
    assert [t.reason for t in transitions if t.type == "Warning"] == []


def test_ready_carries_the_fills_summary_and_is_announced_once() -> None:
    status, transitions = _status(_obs(_job("Complete"), _pod(0, json.dumps(SUMMARY))))
    assert status.cache.state == CacheState.READY
    assert (status.cache.bytes, status.cache.digest) == (1234, "sha256:abc")
    assert status.cache.completed_at == datetime(2026, 11, 29, 9, 59, tzinfo=UTC)
    assert [t.reason for t in transitions] == ["CacheFilled"]
    # later reconciles read no pod: the status keeps what the fill said
    again, transitions = _status(_obs(_job("Complete")), previous=status)
    assert again.cache == status.cache
    assert "CacheFilled" not in [t.reason for t in transitions]
    assert not needs_pod(_job("Complete"), status.cache, "k1")
    assert needs_pod(_job("Complete"), status.cache, "k2")


def test_ready_without_a_summary_says_what_is_unknown() -> None:
    job = _job("Complete")
    job["status"]["completionTime"] = "2026-11-29T09:58:00Z"
    status, _ = _status(_obs(job, None))
    assert status.cache.state == CacheState.READY
    assert status.cache.bytes is None and status.cache.digest is None
    assert "size and digest of the cache are unknown" in (status.cache.message or "")


def test_a_failed_fill_is_degraded_and_stalled_at_once_with_one_event() -> None:
    pod = _pod(1, "cache fill failed: models/resnet50 from s3://x: HTTP 404 NoSuchBucket")
    status, transitions = _status(_obs(_job("Failed", reason="PodFailurePolicy"), pod))
    assert status.cache.state == CacheState.FAILED
    assert "NoSuchBucket" in (status.cache.message or "")
    assert "delete Job demo-fill-k1" in (status.cache.message or "")
    assert _cond(status, "Degraded") == ("True", "CacheFillFailed")
    assert _cond(status, "Stalled") == ("True", "CacheFillFailed")
    assert _cond(status, "Ready") == ("False", "CacheFillFailed")
    assert status.phase.value == "Degraded"
    warnings = [t for t in transitions if t.type == "Warning"]
    assert [t.reason for t in warnings] == ["CacheFillFailed"]
    assert "NoSuchBucket" in warnings[0].message


def test_a_failed_fill_without_a_pod_message_uses_the_jobs_condition() -> None:
    job = _job("Failed", reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit")
    status, _ = _status(_obs(job))
    assert (status.cache.message or "").startswith("BackoffLimitExceeded: Job has reached")


def test_a_new_key_filling_while_the_old_pods_serve() -> None:
    dep = {
        "metadata": {"name": "resnet50", "generation": 1},
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2},
    }
    status, _ = _status(_obs(_job(None)), dep=dep)
    assert _cond(status, "Available") == ("True", "ReplicasReady")
    assert _cond(status, "Ready") == ("False", "CacheFilling")
    ready = get_condition(status.conditions, "Ready")
    assert ready is not None and "serve the previous models" in ready.message


def test_a_fill_held_up_says_why() -> None:
    pod = {
        "metadata": {"name": "demo-fill-k1-abcde"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/7 nodes are available: pod has unbound immediate PersistentVolumeClaims.",
                }
            ],
        },
    }
    status, _ = _status(_obs(_job(None), pod))
    assert status.cache.state == CacheState.FILLING
    assert "unbound immediate PersistentVolumeClaims" in (status.cache.message or "")
    assert _cond(status, "Degraded") == ("True", "Unschedulable")
    assert _cond(status, "Ready") == ("False", "CacheFilling")
    assert needs_pod(_job(None), None, "k1")  # looked at while it fills


RETRY_AT = datetime(2026, 11, 29, 10, 2, tzinfo=UTC)


def test_a_failed_fill_says_when_it_is_retried() -> None:
    pod = _pod(1, "cache fill failed: models/resnet50 from s3://x: HTTP 403 AccessDenied")
    status, transitions = _status(_obs(_job("Failed"), pod, retries=1, retry_at=RETRY_AT))
    cache = status.cache
    assert (cache.state, cache.retries, cache.retry_at) == (CacheState.FAILED, 1, RETRY_AT)
    assert "AccessDenied" in (cache.message or "")
    assert "retry 2 at 2026-11-29T10:02:00Z" in (cache.message or "")
    assert "delete Job demo-fill-k1 to retry now" in (cache.message or "")
    # still Stalled: nothing converges before the retry, and maybe not after it
    assert _cond(status, "Stalled") == ("True", "CacheFillFailed")
    assert [t.reason for t in transitions if t.type == "Warning"] == ["CacheFillFailed"]
    # a retry that failed again has another retry time: the stored status is not reused
    assert needs_pod(_job("Failed"), cache, "k1", RETRY_AT) is False
    assert needs_pod(_job("Failed"), cache, "k1", datetime(2026, 11, 29, 10, 6, tzinfo=UTC)) is True
    status2, _ = _status(
        _obs(_job("Failed"), None, retries=2, retry_at=datetime(2026, 11, 29, 10, 6, tzinfo=UTC)),
        previous=status,
    )
    assert status2.cache.retry_at != RETRY_AT and "retry 3 at" in (status2.cache.message or "")


def test_the_fill_started_again_is_pending_then_filling_and_ready_keeps_the_count() -> None:
    status, _ = _status(_obs(None, retries=1))
    assert (status.cache.state, status.cache.retries) == (CacheState.PENDING, 1)
    assert "filling again after a failure (retry 1)" in (status.cache.message or "")
    assert status.cache.retry_at is None
    assert _cond(status, "Stalled")[0] == "False"
    filling, _ = _status(_obs(_job(None), retries=1), previous=status)
    assert (filling.cache.state, filling.cache.retries) == (CacheState.FILLING, 1)
    ready, _ = _status(_obs(_job("Complete"), _pod(0, json.dumps(SUMMARY)), retries=1), previous=filling)
    assert (ready.cache.state, ready.cache.retries, ready.cache.retry_at) == (CacheState.READY, 1, None)


def test_retries_back_off_to_an_hour() -> None:
    assert [retry_delay(60, n) for n in range(8)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert retry_delay(60, 10_000) == 3600
    assert retry_delay(2, 0) == 2  # the e2e tests' setting
    assert retry_delay(7200, 3) == 7200  # a first delay above the cap is the cap
