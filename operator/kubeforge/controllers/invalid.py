"""Bad input becomes status and an Event that name the field; never a crash, never a retry loop."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kubeforge.api.common import Condition
from kubeforge.status.conditions import get_condition, set_condition

MAX_MESSAGE = 2000


def describe(err: ValidationError) -> str:
    """`spec.models[0].source: String should match pattern ...; ...` (field paths as on the wire)."""
    parts = []
    for e in err.errors():
        path = ""
        for loc in e["loc"]:
            path += f"[{loc}]" if isinstance(loc, int) else (f".{loc}" if path else str(loc))
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {msg}" if path else msg)
    return "; ".join(parts)[:MAX_MESSAGE]


def invalid_status(
    body: dict[str, Any], message: str, failed_phase: str, now: Any
) -> tuple[dict[str, Any], bool]:
    """(status, changed) for an object whose spec cannot be used."""
    generation = body["metadata"].get("generation")
    old = body.get("status") or {}
    conditions = [Condition.model_validate(c) for c in old.get("conditions") or []]
    before = get_condition(conditions, "Ready")
    for type_, value in (("Ready", False), ("Degraded", True)):
        conditions = set_condition(conditions, type_, value, "InvalidSpec", message, generation, now)
    status = {
        "observedGeneration": generation,
        "phase": failed_phase,
        "conditions": [c.wire() for c in sorted(conditions, key=lambda c: c.type)],
    }
    changed = before is None or before.reason != "InvalidSpec" or before.message != message
    return status, changed or old.get("observedGeneration") != generation
