"""The status is written as a JSON merge patch that turns the stored status into the new one exactly."""

from __future__ import annotations

from typing import Any

import pytest

from kubeforge.controllers.status_patch import merge_patch


def _apply(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _apply(result.get(key), value)
    return result


ENDPOINTS = {"http": "http://lm.a.svc:8000", "openai": "http://lm.a.svc:9000/v1", "generateStream": ["u"]}


@pytest.mark.parametrize(
    ("old", "new"),
    [
        # an endpoint gone from status.endpoints (the OpenAI front turned off): null at its depth
        (
            {"phase": "Ready", "endpoints": ENDPOINTS},
            {"phase": "Ready", "endpoints": {"http": ENDPOINTS["http"]}},
        ),
        ({"phase": "Ready", "cache": {"phase": "Filled"}}, {"phase": "Progressing"}),
        ({"conditions": [{"type": "Ready"}]}, {"conditions": []}),
        ({}, {"endpoints": ENDPOINTS}),
        ({"a": {"b": {"c": 1, "d": 2}}}, {"a": {"b": {"c": 1}}}),
    ],
)
def test_the_patch_turns_the_old_status_into_the_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert _apply(old, merge_patch(old, new)) == new


def test_a_removed_endpoint_is_cleared_and_the_others_kept() -> None:
    patch = merge_patch({"endpoints": ENDPOINTS}, {"endpoints": {"http": ENDPOINTS["http"]}})
    assert patch == {"endpoints": {"http": ENDPOINTS["http"], "openai": None, "generateStream": None}}
