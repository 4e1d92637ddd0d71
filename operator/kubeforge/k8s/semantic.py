"""Semantic equality of a desired object and the live one, so an unchanged child costs no write.

The API server adds defaults, status and metadata to what we apply; the live object is
"up to date" when everything we would apply is already there with the same value.
"""

from __future__ import annotations

from typing import Any


def _empty(value: Any) -> bool:
    return value is None or value == {} or value == []


def is_subset(desired: Any, live: Any) -> bool:
    """Whether every field of `desired` is present in `live` with an equal value."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return _empty(desired) and _empty(live)
        return all(
            is_subset(value, live.get(key)) if key in live else _empty(value)
            for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(desired) == len(live)
            and all(is_subset(d, lv) for d, lv in zip(desired, live, strict=True))
        ) or (_empty(desired) and _empty(live))
    if isinstance(desired, int | float) and isinstance(live, str) and not isinstance(desired, bool):
        return str(desired) == live
    return bool(desired == live)


def up_to_date(desired: dict[str, Any], live: dict[str, Any] | None) -> bool:
    """Whether applying `desired` would change nothing (labels, annotations, owner refs, spec...)."""
    if live is None:
        return False
    return is_subset({k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}, live)
