"""Operator rollouts: which template change is applied at once, which waits for a slot, and the count."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubeforge.controllers.cache import ObjectCache
from kubeforge.controllers.rollout import (
    OPERATOR_CAUSE,
    ROLLOUT_CAUSE_ANNOTATION,
    SPEC_GENERATION_ANNOTATION,
    OperatorRollouts,
    annotated,
)

Object = dict[str, Any]


def _desired(name: str, image: str = "helper:1", uid: str | None = None) -> Object:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "labels": {"kubeforge.io/owner-kind": "modeldeployment", "kubeforge.io/owner-name": name},
            "ownerReferences": [
                {"kind": "ModelDeployment", "name": name, "uid": uid or f"uid-{name}", "controller": True}
            ],
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {"spec": {"initContainers": [{"name": "repository", "image": image}]}},
        },
    }


def _live(
    desired: Object, generation: int, cause: str | None = None, available: int = 2, updated: int = 2
) -> Object:
    live = copy.deepcopy(annotated(desired, generation, cause))
    live["metadata"]["generation"] = 7
    live["status"] = {
        "observedGeneration": 7,
        "replicas": 2,
        "readyReplicas": available,
        "availableReplicas": available,
        "updatedReplicas": updated,
    }
    return live


def _cache(*objects: Object) -> ObjectCache:
    cache = ObjectCache()
    for obj in objects:
        cache.upsert(obj["kind"], obj)
    return cache


def test_a_new_workload_is_applied_with_its_generation() -> None:
    decision = OperatorRollouts(1).decide(ObjectCache(), _desired("a"), None, 3, None)
    assert decision.desired is not None
    assert decision.desired["metadata"]["annotations"][SPEC_GENERATION_ANNOTATION] == "3"
    assert not decision.operator_rollout


def test_an_edit_rolls_at_once_even_when_every_slot_is_taken() -> None:
    busy = _live(_desired("busy"), 1, OPERATOR_CAUSE, updated=0)
    live = _live(_desired("a"), 3)
    decision = OperatorRollouts(1).decide(_cache(busy, live), _desired("a", "helper:2"), live, 4, 3)
    assert decision.desired is not None and not decision.operator_rollout


def test_an_operator_change_takes_a_free_slot_and_is_marked() -> None:
    live = _live(_desired("a"), 3)
    decision = OperatorRollouts(1).decide(_cache(live), _desired("a", "helper:2"), live, 3, 3)
    assert decision.operator_rollout and decision.desired is not None
    assert decision.desired["metadata"]["annotations"][ROLLOUT_CAUSE_ANNOTATION] == OPERATOR_CAUSE


def test_an_operator_change_waits_while_k_operator_rollouts_are_incomplete() -> None:
    rolling = _live(_desired("b"), 1, OPERATOR_CAUSE, available=1, updated=1)
    live = _live(_desired("a"), 3)
    decision = OperatorRollouts(1).decide(_cache(rolling, live), _desired("a", "helper:2"), live, 3, 3)
    assert decision.desired is None
    assert decision.deferred is not None and "team-a/b" in decision.deferred
    # a second slot lets it go
    assert OperatorRollouts(2).decide(_cache(rolling, live), _desired("a", "helper:2"), live, 3, 3).desired


def test_a_completed_operator_rollout_frees_its_slot() -> None:
    done = _live(_desired("b"), 1, OPERATOR_CAUSE)
    live = _live(_desired("a"), 3)
    assert (
        OperatorRollouts(1).decide(_cache(done, live), _desired("a", "helper:2"), live, 3, 3).operator_rollout
    )


def test_a_rollout_an_edit_caused_takes_no_slot() -> None:
    edited = _live(_desired("b"), 1, None, updated=0)
    live = _live(_desired("a"), 3)
    assert OperatorRollouts(1).decide(_cache(edited, live), _desired("a", "helper:2"), live, 3, 3).desired


def test_a_workload_that_serves_nothing_rolls_at_once_and_takes_no_slot() -> None:
    rolling = _live(_desired("b"), 1, OPERATOR_CAUSE, updated=0)
    down = _live(_desired("a"), 3, available=0)
    decision = OperatorRollouts(1).decide(_cache(rolling, down), _desired("a", "helper:2"), down, 3, 3)
    assert decision.desired is not None and not decision.operator_rollout
    assert ROLLOUT_CAUSE_ANNOTATION not in decision.desired["metadata"]["annotations"]


def test_the_cause_stays_while_the_template_does() -> None:
    live = _live(_desired("a", "helper:2"), 3, OPERATOR_CAUSE)
    decision = OperatorRollouts(1).decide(_cache(live), _desired("a", "helper:2"), live, 3, 3)
    assert decision.desired is not None
    assert decision.desired["metadata"]["annotations"][ROLLOUT_CAUSE_ANNOTATION] == OPERATOR_CAUSE


@pytest.mark.parametrize(("observed", "operator"), [(3, True), (2, False)])
def test_a_workload_of_an_earlier_release_is_judged_by_the_generation_in_status(
    observed: int, operator: bool
) -> None:
    """No annotations: the generation that release last reconciled says whether the spec changed since."""
    live = copy.deepcopy(_desired("a"))
    live["status"] = {"availableReplicas": 2}
    decision = OperatorRollouts(1).decide(_cache(live), _desired("a", "helper:2"), live, 3, observed)
    assert decision.operator_rollout is operator
    unchanged = OperatorRollouts(1).decide(_cache(live), _desired("a"), live, 3, observed)
    assert unchanged.desired is not None and not unchanged.operator_rollout
