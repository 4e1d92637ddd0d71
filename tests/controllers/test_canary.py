"""The canary rollout's moves (controllers/canary.py): steps, their clock, analysis verdicts, verbs.

Prometheus is answered here by a table of the queries' values; the real Prometheus, reading real
tritonservers, answers the same queries in e2e/test_canary.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubeforge.api.modeldeployment import ModelDeployment, RolloutPhase, RolloutStatus
from kubeforge.builders.modeldeployment import build_canary_deployment, build_triton_deployment
from kubeforge.controllers import canary
from kubeforge.controllers.analysis import PrometheusError
from kubeforge.controllers.rollout import annotated, workload_template_hash
from kubeforge.settings import Settings

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SETTINGS = Settings()
STEPS = [{"weight": 30, "pauseSeconds": 60}, {"weight": 60, "pauseSeconds": 60}]
ANALYSIS = {"intervalSeconds": 30, "minRequests": 20}
ABORT = {canary.ACTION_ANNOTATION: "abort"}


def _md(
    step_ms: str, *, generation: int = 2, annotations: dict[str, str] | None = None, **canary: Any
) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "metadata": {
                "name": "shop",
                "namespace": "ns",
                "uid": "u1",
                "generation": generation,
                "annotations": annotations or {},
            },
            "spec": {
                "replicas": 3,
                "models": [
                    {
                        "name": "m",
                        "source": "pvc://models/m",
                        "format": "python",
                        "config": {"parameters": {"s": step_ms}},
                    }
                ],
                "rollout": {"canary": {"steps": STEPS, **canary}},
            },
        }
    )


def _stable(generation: int = 1) -> dict[str, Any]:
    """The live stable Deployment: the first spec's template, serving 3 replicas."""
    live = annotated(build_triton_deployment(_md("1", generation=generation), SETTINGS), generation, None)
    live["status"] = {"availableReplicas": 3, "readyReplicas": 3, "replicas": 3}
    return live


def _canary_live(md: ModelDeployment, replicas: int, ready: int) -> dict[str, Any]:
    desired = build_triton_deployment(md, SETTINGS)
    live = build_canary_deployment(md, SETTINGS, replicas, workload_template_hash(desired))
    live["metadata"]["generation"] = 1
    live["status"] = {
        "observedGeneration": 1,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": ready,
        "availableReplicas": ready,
    }
    return live


def _values(requests: float, canary_error_ratio: float, latency: tuple[float, float] = (2000, 2000)) -> Any:
    async def query(promql: str) -> float | None:
        is_canary = "shop-canary-" in promql
        if promql.startswith("(sum(increase(nv_inference_request_failure"):
            return canary_error_ratio if is_canary else 0.0
        if "nv_inference_request_summary_us" in promql:
            return latency[0] if is_canary else latency[1]
        return requests

    return query


def _plan(
    md: ModelDeployment,
    previous: RolloutStatus | None,
    live_canary: dict[str, Any] | None = None,
    now: datetime = NOW,
    query: Any = None,
) -> canary.Plan:
    desired = build_triton_deployment(md, SETTINGS)
    pods = _pods(workload_template_hash(desired))
    move = asyncio.run(
        canary.plan(
            md, SETTINGS, desired, _stable(), live_canary, previous, pods, query or _values(100, 0), now
        )
    )
    # what the reconcile does with a canary that ends in this move (controllers/modeldeployment.py)
    ended = canary.ended(md, previous, move.status, live_canary, now)
    assert ended is not None
    move.status = ended
    return move


def _pod(name: str, labels: dict[str, str], phase: str = "Running", deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T11:59:00Z"
    return {"metadata": meta, "status": {"phase": phase}}


def _pods(revision: str) -> list[dict[str, Any]]:
    canary_labels = {"kubeforge.io/revision": "canary", "kubeforge.io/canary-revision": revision}
    return [
        _pod("shop-7d9f-a", {}),
        _pod("shop-7d9f-b", {}),
        _pod("shop-canary-5c2e-c", canary_labels),
        # a previous canary's pod, and one going away: the analysis names neither
        _pod("shop-canary-0a1b-d", {**canary_labels, "kubeforge.io/canary-revision": "an-earlier-revision"}),
        _pod("shop-canary-5c2e-e", canary_labels, deleting=True),
        _pod("shop-7d9f-f", {}, phase="Pending"),
    ]


def test_the_analysis_names_the_running_pods_of_each_revision() -> None:
    assert canary.revision_pods(_pods("r1"), "r1") == (["shop-7d9f-a", "shop-7d9f-b"], ["shop-canary-5c2e-c"])
    queries: list[str] = []

    async def record(promql: str) -> float | None:
        queries.append(promql)
        return 100.0

    md = _md("2", analysis=ANALYSIS)
    _plan(md, _running(md), _canary_live(md, 1, 1), NOW + timedelta(seconds=30), record)
    canary_queries = [q for q in queries if "shop-canary-5c2e-c" in q]
    assert canary_queries and all('pod=~"shop-canary-5c2e-c"' in q for q in canary_queries), queries
    assert all("shop-canary-0a1b-d" not in q and "shop-canary-5c2e-e" not in q for q in queries)
    assert any('pod=~"shop-7d9f-a|shop-7d9f-b"' in q for q in queries)


def test_no_running_canary_pod_is_inconclusive() -> None:
    md = _md("2", analysis=ANALYSIS)
    desired = build_triton_deployment(md, SETTINGS)
    stable_only = [_pod("shop-7d9f-a", {})]
    plan = asyncio.run(
        canary.plan(
            md,
            SETTINGS,
            desired,
            _stable(),
            _canary_live(md, 1, 1),
            _running(md),
            stable_only,
            _values(100, 0),
            NOW + timedelta(seconds=30),
        )
    )
    assert plan.status.analyses and plan.status.analyses[-1].verdict == "Inconclusive"
    assert plan.status.analyses[-1].message == "no pod of the canary revision is running"


@pytest.mark.parametrize(
    ("total", "weight", "split"),
    [(3, 30, (1, 2)), (3, 60, (2, 1)), (4, 25, (1, 3)), (1, 10, (1, 1)), (0, 50, (0, 0))],
)
def test_a_weight_splits_the_replicas_with_one_stable_kept(
    total: int, weight: int, split: tuple[int, int]
) -> None:
    assert canary.split(total, weight) == split


def test_only_a_users_edit_of_the_template_takes_the_canary_path() -> None:
    md = _md("2")
    desired = build_triton_deployment(md, SETTINGS)
    assert canary.wanted(md, desired, _stable(), None, 1)
    # the same template: nothing to roll
    same = _md("1")
    assert not canary.wanted(same, build_triton_deployment(same, SETTINGS), _stable(), None, 1)
    # the operator renders the same generation differently (a new release): not a canary
    assert not canary.wanted(md, desired, _stable(generation=2), None, 2)
    # no canary configured
    plain = md.model_copy(update={"spec": md.spec.model_copy(update={"rollout": None})})
    assert not canary.wanted(plain, desired, _stable(), None, 1)


def test_a_new_canary_starts_at_step_one_and_its_clock_waits_for_its_pods() -> None:
    md = _md("2", analysis=ANALYSIS)
    plan = _plan(md, None)
    assert plan.status.phase == RolloutPhase.PROGRESSING
    assert (plan.status.step, plan.status.canary_replicas, plan.stable_replicas) == (1, 1, 2)
    assert plan.status.step_started_at is None and plan.stable is None
    assert plan.canary is not None and plan.canary["spec"]["replicas"] == 1
    assert [e[1] for e in plan.events] == ["CanaryStarted"]
    ready = _plan(md, plan.status, _canary_live(md, 1, 1))
    assert ready.status.step_started_at == NOW and ready.events == []


def _running(md: ModelDeployment, step: int = 1, started: datetime = NOW) -> RolloutStatus:
    first = _plan(md, None)
    return first.status.model_copy(update={"step": step, "step_started_at": started})


def test_a_step_waits_for_its_pause_and_a_passed_analysis_then_advances() -> None:
    md = _md("2", analysis=ANALYSIS)
    running = _running(md)
    live = _canary_live(md, 1, 1)
    early = _plan(md, running, live, now=NOW + timedelta(seconds=10))
    assert early.status.step == 1 and not early.status.analyses and early.requeue == 20.0
    analysed = _plan(md, running, live, now=NOW + timedelta(seconds=30))
    assert analysed.status.analyses and analysed.status.analyses[-1].verdict == "Passed"
    assert analysed.status.step == 1  # passed, but the 60 s pause holds
    advanced = _plan(md, analysed.status, live, now=NOW + timedelta(seconds=60))
    assert (advanced.status.step, advanced.status.step_started_at) == (2, None)
    assert advanced.canary is not None and advanced.canary["spec"]["replicas"] == 2
    assert [e[1] for e in advanced.events] == ["AnalysisPassed", "CanaryStepPassed"]


def test_the_last_step_passed_promotes() -> None:
    md = _md("2")  # no analysis: the pauses alone
    last = _plan(md, _running(md, step=2), _canary_live(md, 2, 2), now=NOW + timedelta(seconds=61))
    assert last.status.phase == RolloutPhase.COMPLETE and last.canary is None
    assert last.stable is not None and last.stable_replicas == 3
    assert last.status.stable_revision == workload_template_hash(build_triton_deployment(md, SETTINGS))
    assert [e[1] for e in last.events] == ["Promoted"]


def test_a_failed_analysis_rolls_back_with_its_numbers_and_is_not_tried_again() -> None:
    md = _md("2", analysis=ANALYSIS)
    failed = _plan(md, _running(md), _canary_live(md, 1, 1), NOW + timedelta(seconds=30), _values(100, 0.4))
    assert failed.status.phase == RolloutPhase.ROLLED_BACK and failed.canary is None
    assert failed.stable is None and failed.stable_replicas == 3
    assert "errorRatio canary 0.4 vs stable 0" in failed.status.message
    assert [e[1] for e in failed.events] == ["AnalysisFailed", "RolledBack"]
    held = _plan(md, failed.status, None, NOW + timedelta(seconds=90))
    assert held.status.phase == RolloutPhase.ROLLED_BACK and held.canary is None and held.events == []
    retried = _plan(
        _md("2", analysis=ANALYSIS, annotations={canary.ACTION_ANNOTATION: "retry"}), failed.status
    )
    assert retried.status.phase == RolloutPhase.PROGRESSING and retried.status.step == 1
    assert retried.acted == "retry"


def test_a_slower_canary_fails_on_latency_and_too_few_requests_hold_the_step() -> None:
    md = _md("2", analysis=ANALYSIS)
    live, later = _canary_live(md, 1, 1), NOW + timedelta(seconds=30)
    slow = _plan(md, _running(md), live, later, _values(100, 0, latency=(9000, 2000)))
    assert slow.status.phase == RolloutPhase.ROLLED_BACK
    assert "latencyP90 canary 9000 vs stable 2000 (limit: <= 1.5 x stable)" in slow.status.message
    few = _plan(md, _running(md), live, later, _values(5, 0))
    assert few.status.phase == RolloutPhase.PROGRESSING
    assert few.status.analyses and few.status.analyses[-1].verdict == "Inconclusive"
    stuck = _plan(md, few.status, live, NOW + timedelta(seconds=61), _values(5, 0))
    assert stuck.status.step == 1 and "waiting for an analysis to pass" in stuck.status.message


def test_a_steps_first_analysis_waits_for_the_canarys_samples_for_one_more_interval_at_most() -> None:
    async def unscraped(promql: str) -> float | None:
        return None if "shop-canary-" in promql else await _values(100, 0)(promql)

    md = _md("2", analysis=ANALYSIS)
    live, due = _canary_live(md, 1, 1), NOW + timedelta(seconds=30)
    # Prometheus has not scraped the new pod twice yet: nothing recorded, asked again soon
    waiting = _plan(md, _running(md), live, due, unscraped)
    assert waiting.status.phase == RolloutPhase.PROGRESSING and not waiting.status.analyses
    assert waiting.requeue == canary.SAMPLES_WAIT_SECONDS and waiting.events == []
    assert "its first analysis waiting for the canary's samples in Prometheus" in waiting.status.message
    # its samples are there: judged then, and the next one an interval later
    judged = _plan(md, waiting.status, live, due + timedelta(seconds=4), _values(100, 0.4))
    assert judged.status.phase == RolloutPhase.ROLLED_BACK
    # still none an interval later: recorded inconclusive, and the usual cadence from there
    late = NOW + timedelta(seconds=60)
    recorded = _plan(md, waiting.status, live, late, unscraped)
    assert recorded.status.analyses and recorded.status.analyses[-1].verdict == "Inconclusive"
    assert "requests canary no data" in recorded.status.analyses[-1].message
    assert recorded.requeue == 30.0 and [e[1] for e in recorded.events] == ["AnalysisInconclusive"]
    again = _plan(md, recorded.status, live, late + timedelta(seconds=30), unscraped)
    assert again.status.analyses and len(again.status.analyses) == 2 and again.requeue == 30.0


def test_a_streaming_models_canary_is_judged_on_time_to_first_token_too() -> None:
    async def query(promql: str) -> float | None:
        if "time_to_first_token" in promql:
            return 900.0 if "shop-canary-" in promql else 300.0
        return 0.0 if promql.startswith("(sum(increase(nv_inference_request_failure") else 100.0

    streaming = _md("2", analysis=ANALYSIS)
    first = streaming.spec.models[0]
    assert first.config is not None
    model = first.model_copy(update={"config": first.config.model_copy(update={"decoupled": True})})
    streaming = streaming.model_copy(update={"spec": streaming.spec.model_copy(update={"models": [model]})})
    plan = _plan(
        streaming, _running(streaming), _canary_live(streaming, 1, 1), NOW + timedelta(seconds=30), query
    )
    assert plan.status.phase == RolloutPhase.ROLLED_BACK
    assert "timeToFirstTokenMs canary 900 vs stable 300 (limit: <= 1.5 x stable)" in plan.status.message
    # a model that does not stream is not judged on it
    plain = _md("2", analysis=ANALYSIS)
    passed = _plan(plain, _running(plain), _canary_live(plain, 1, 1), NOW + timedelta(seconds=30), query)
    assert passed.status.analyses and [m.name for m in passed.status.analyses[-1].metrics] == [
        "requests",
        "errorRatio",
        "latencyP90",
    ]


def test_prometheus_unreachable_is_inconclusive_and_says_why() -> None:
    async def down(_: str) -> float | None:
        raise PrometheusError("http://prometheus:9090: connection refused")

    md = _md("2", analysis=ANALYSIS)
    plan = _plan(md, _running(md), _canary_live(md, 1, 1), NOW + timedelta(seconds=30), down)
    assert plan.status.phase == RolloutPhase.PROGRESSING
    assert plan.status.analyses and "connection refused" in plan.status.analyses[-1].message


def test_verbs_promote_abort_and_pause() -> None:
    running = _running(_md("2"))
    promote = _plan(_md("2", annotations={canary.ACTION_ANNOTATION: "promote"}), running)
    assert promote.status.phase == RolloutPhase.COMPLETE and promote.stable is not None
    assert promote.acted == "promote"
    abort = _plan(_md("2", annotations={canary.ACTION_ANNOTATION: "abort"}), running)
    assert abort.status.phase == RolloutPhase.ROLLED_BACK and abort.acted == "abort"
    paused_md = _md("2", annotations={canary.PAUSED_ANNOTATION: "true"})
    paused = _plan(paused_md, running, _canary_live(paused_md, 1, 1), NOW + timedelta(hours=1))
    assert paused.status.phase == RolloutPhase.PAUSED and paused.status.step == 1


def test_an_unknown_verb_is_dropped_and_said_so() -> None:
    typo = _plan(_md("2", annotations={canary.ACTION_ANNOTATION: "promte"}), _running(_md("2")))
    assert typo.status.phase == RolloutPhase.PROGRESSING and typo.acted == "promte"
    assert typo.events == [
        (
            "Warning",
            "RolloutActionIgnored",
            "kubeforge.io/rollout-action=promte ignored: the verbs are promote, abort, retry",
        )
    ]


def test_an_unknown_verb_on_a_rolled_back_revision_is_said_too() -> None:
    md = _md("2", analysis=ANALYSIS)
    failed = _plan(md, _running(md), _canary_live(md, 1, 1), NOW + timedelta(seconds=30), _values(100, 0.4))
    typo = _plan(_md("2", analysis=ANALYSIS, annotations={canary.ACTION_ANNOTATION: "rety"}), failed.status)
    assert typo.status.phase == RolloutPhase.ROLLED_BACK and typo.acted == "rety"
    assert [e[1] for e in typo.events] == ["RolloutActionIgnored"]


def test_an_edit_mid_rollout_replaces_the_canary_from_step_one() -> None:
    md = _md("2")
    running = _running(md, step=2)
    newer = _plan(_md("3", generation=3), running)
    assert newer.status.step == 1 and newer.status.canary_revision != running.canary_revision
    assert [e[1] for e in newer.events] == ["CanaryReplaced", "CanaryStarted"]


def test_settling_keeps_a_completed_status_and_announces_a_cancelled_canary() -> None:
    md = _md("1")
    revision = workload_template_hash(build_triton_deployment(md, SETTINGS))
    status, events = canary.settled(md, _running(_md("2")), revision)
    assert (
        status is not None
        and status.phase == RolloutPhase.COMPLETE
        and [e[1] for e in events] == ["CanaryCancelled"]
    )
    assert canary.settled(md, status, revision) == (status, [])
    plain = md.model_copy(update={"spec": md.spec.model_copy(update={"rollout": None})})
    assert canary.settled(plain, None, revision) == (None, [])


def test_naming_a_gateway_rolls_the_stable_for_its_label_rather_than_as_a_canary() -> None:
    """Naming (or no longer naming) a Gateway changes only the stable pods' revision label: a
    rolling update; with a new model as well it is a canary."""
    routed = _md("1", gateway={"name": "edge"})
    desired = build_triton_deployment(routed, SETTINGS)
    assert desired["spec"]["template"]["metadata"]["labels"]["kubeforge.io/revision"] == "stable"
    assert canary.routing_label_only(desired, _stable())
    assert not canary.wanted(routed, desired, _stable(), None, 1)
    # and back: the stable runs the labelled template, the spec names no Gateway
    labelled = annotated(desired, 1, None)
    labelled["status"] = {"availableReplicas": 3, "readyReplicas": 3, "replicas": 3}
    plain = _md("1", generation=2)
    assert not canary.wanted(plain, build_triton_deployment(plain, SETTINGS), labelled, None, 1)
    # a new model beside the label: a canary
    both = _md("2", gateway={"name": "edge"})
    both_desired = build_triton_deployment(both, SETTINGS)
    assert not canary.routing_label_only(both_desired, _stable())
    assert canary.wanted(both, both_desired, _stable(), None, 1)


def test_the_gateway_routes_a_steps_weight_once_its_pods_are_ready() -> None:
    md = _md("2", analysis=ANALYSIS, gateway={"name": "edge"})
    starting = _plan(md, None)
    assert starting.status.routed_weight == 0  # no canary pod ready: nothing routed to it
    ready = _plan(md, starting.status, _canary_live(md, 1, 1))
    assert ready.status.routed_weight == 30
    # step 1 passed: step 2's pods start, the route keeps step 1's weight until they are ready
    later = NOW + timedelta(seconds=61)
    passed = _plan(md, ready.status, _canary_live(md, 1, 1), later, _values(100, 0))
    assert passed.status.step == 2 and passed.status.step_started_at is None
    assert passed.status.routed_weight == 30
    assert _plan(md, passed.status, _canary_live(md, 2, 2), later).status.routed_weight == 60
    # the split of the replicas is the same with a Gateway
    assert (passed.status.canary_replicas, passed.stable_replicas) == (2, 1)
    # without a Gateway nothing is routed by weight
    assert _plan(_md("2"), None).status.routed_weight is None


def test_stable_pods_labelled_for_a_gateway_are_the_stables_in_the_analysis() -> None:
    pods = [
        _pod("shop-7d9f-a", {"kubeforge.io/revision": "stable"}),
        _pod("shop-canary-5c2e-c", {"kubeforge.io/revision": "canary", "kubeforge.io/canary-revision": "r1"}),
    ]
    assert canary.revision_pods(pods, "r1") == (["shop-7d9f-a"], ["shop-canary-5c2e-c"])


def test_with_a_gateway_an_ended_canary_drains_before_it_goes() -> None:
    """Promoted, rolled back or cancelled: the route sends the canary nothing at once (weight 0) and its
    pods keep running for gateway.drainSeconds, as the gateway follows the route some seconds later."""
    md = _md("2", analysis=ANALYSIS, gateway={"name": "edge", "drainSeconds": 20})
    running = _plan(md, _running(md), _canary_live(md, 1, 1)).status
    assert running.routed_weight == 30
    aborted = _md("2", analysis=ANALYSIS, gateway={"name": "edge", "drainSeconds": 20}, annotations=ABORT)
    ended = _plan(aborted, running, _canary_live(md, 1, 1))
    assert ended.status.phase == RolloutPhase.ROLLED_BACK and ended.canary is None
    assert (ended.status.routed_weight, ended.status.canary_drain_until) == (0, NOW + timedelta(seconds=20))
    assert canary.drain_left(ended.status, NOW + timedelta(seconds=5)) == 15
    assert canary.drain_left(ended.status, NOW + timedelta(seconds=20)) is None
    gone = canary.drained(ended.status)
    assert gone is not None and (gone.routed_weight, gone.canary_drain_until) == (None, None)
    assert gone.phase == RolloutPhase.ROLLED_BACK
    # no canary Deployment left to drain (a restart found it gone): nothing to wait for
    assert _plan(aborted, running, None).status.canary_drain_until is None
    # cancelled by an edit back to the stable's template: drains too
    back = _md("1", gateway={"name": "edge", "drainSeconds": 20})
    revision = workload_template_hash(build_triton_deployment(back, SETTINGS))
    settled, _ = canary.settled(back, running, revision)
    cancelled = canary.ended(back, running, settled, _canary_live(md, 1, 1), NOW)
    assert cancelled is not None and cancelled.canary_drain_until == NOW + timedelta(seconds=20)
    # without a Gateway there is no route to move first: the canary goes at once
    plain = _plan(_md("2", annotations=ABORT), _running(_md("2")), _canary_live(_md("2"), 1, 1))
    assert plain.status.canary_drain_until is None and plain.status.routed_weight is None


def test_a_drained_canarys_pods_are_counted_until_the_last_is_gone() -> None:
    """The route keeps an ended canary out until none of its pods is left, terminating ones included."""
    pods = _pods("r1")
    assert canary.canary_pods(pods) == ["shop-canary-5c2e-c", "shop-canary-0a1b-d", "shop-canary-5c2e-e"]
    assert canary.canary_pods([p for p in pods if "canary" not in p["metadata"]["name"]]) == []
