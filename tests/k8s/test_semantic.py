"""Up to date means no write: what admission adds to a child is not a difference, what we removed is."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubeforge.k8s.semantic import is_subset, stamped, up_to_date


def _deployment(env: list[dict[str, str]] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "triton", "image": "t:1", "env": env or [{"name": "A", "value": "1"}]}
                    ],
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                }
            }
        },
    }


def _mutated(desired: dict[str, Any]) -> dict[str, Any]:
    """What a mutating webhook and a policy leave: a sidecar, one more env var, one more toleration."""
    live = copy.deepcopy(stamped(desired))
    pod = live["spec"]["template"]["spec"]
    pod["containers"][0]["env"].append({"name": "INJECTED", "value": "x"})
    pod["containers"].append({"name": "mesh-proxy", "image": "proxy:1"})
    pod["tolerations"].append({"key": "team", "operator": "Exists"})
    live["status"] = {"replicas": 1}
    return live


def test_items_admission_appended_are_no_difference() -> None:
    desired = _deployment()
    assert up_to_date(stamped(desired), _mutated(desired))


@pytest.mark.parametrize(
    "edit",
    [
        lambda pod: pod["containers"][0]["env"][0].update(value="2"),  # a hand edit of our value
        lambda pod: pod["containers"][0]["env"].pop(0),  # our item removed
        lambda pod: pod["containers"].pop(0),  # our container gone, only the sidecar left
        lambda pod: pod["tolerations"].pop(0),
    ],
)
def test_a_change_to_what_the_operator_set_is_still_a_difference(edit: Any) -> None:
    desired = _deployment()
    live = _mutated(desired)
    edit(live["spec"]["template"]["spec"])
    assert not up_to_date(stamped(desired), live)


def test_an_item_the_operator_removed_is_caught_by_the_hash() -> None:
    before = _deployment([{"name": "A", "value": "1"}, {"name": "B", "value": "2"}])
    after = _deployment([{"name": "A", "value": "1"}])
    live = _mutated(before)
    assert is_subset(after["spec"], live["spec"])  # the subset test alone would miss it
    assert not up_to_date(stamped(after), live)
