"""Which owner events cost a reconcile: not the echo of our own status write; an edit after a short
window, so that a burst of edits costs one reconcile."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

from kubeforge.controllers.context import Context
from kubeforge.controllers.handlers import Runtime
from kubeforge.settings import Settings

Object = dict[str, Any]


def _md(generation: int = 1, **status: Any) -> Object:
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "uid": "u",
            "generation": generation,
            "labels": {"a": "1"},
        },
        "status": status,
    }


def _runtime() -> Runtime:
    return Runtime(
        Context(kube=None, settings=Settings(edit_coalesce_seconds=0.05)), workers=1, namespaces=()
    )  # type: ignore[arg-type]


async def _events(*events: tuple[str, Object, Object | None]) -> tuple[int, int]:
    """(keys queued at once, keys waiting on a timer) after feeding the owner events."""
    runtime = _runtime()
    for type_, obj, previous in events:
        runtime.owner_changed(type_, obj, previous)
    queue = runtime.md_queue
    return len(queue._queued), len(queue._timers)


def test_the_echo_of_a_status_write_costs_nothing() -> None:
    before = _md(phase="Progressing")
    after = _md(phase="Ready")
    assert asyncio.run(_events(("MODIFIED", after, before))) == (0, 0)


def test_an_edit_waits_for_the_window_and_a_burst_is_one_reconcile() -> None:
    edits = [("MODIFIED", _md(g + 1), _md(g)) for g in range(1, 10)]
    assert asyncio.run(_events(*edits)) == (0, 1)


def test_a_label_or_annotation_change_is_reconciled_at_once() -> None:
    before = _md()
    after = copy.deepcopy(before)
    after["metadata"]["annotations"] = {"team": "x"}
    assert asyncio.run(_events(("MODIFIED", after, before))) == (1, 0)
    assert asyncio.run(_events(("ADDED", _md(), None))) == (1, 0)
