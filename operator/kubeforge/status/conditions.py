"""metav1.Condition bookkeeping: a transition time that moves only when the status does."""

from __future__ import annotations

from datetime import datetime

from kubeforge.api.common import Condition, ConditionStatus


def parse_time(value: str | None) -> datetime | None:
    """A Kubernetes timestamp (RFC 3339, `Z`), or None."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """A new list with `type_` set; lastTransitionTime is kept when the status did not change."""
    value = (
        ConditionStatus.UNKNOWN
        if status is None
        else (ConditionStatus.TRUE if status else ConditionStatus.FALSE)
    )
    previous = next((c for c in conditions if c.type == type_), None)
    changed = previous is None or previous.status != value
    condition = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=now if changed or previous is None else previous.last_transition_time,
        observed_generation=generation,
    )
    return [*(c for c in conditions if c.type != type_), condition]


def get_condition(conditions: list[Condition] | None, type_: str) -> Condition | None:
    return next((c for c in conditions or [] if c.type == type_), None)


def is_true(conditions: list[Condition] | None, type_: str) -> bool:
    condition = get_condition(conditions, type_)
    return condition is not None and condition.status == ConditionStatus.TRUE
