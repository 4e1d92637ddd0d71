"""Bad input becomes status and an Event that name the field; never a crash, never a retry loop."""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from kubeforge.api.common import Condition
from kubeforge.controllers.context import Context
from kubeforge.controllers.status_patch import write_status
from kubeforge.k8s.resources import Resource
from kubeforge.status.conditions import get_condition, set_condition
from kubeforge.status.gitops import Verdict, kstatus_conditions

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)

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
    conditions = set_condition(conditions, "Degraded", True, "InvalidSpec", message, generation, now)
    invalid = Verdict(True, "InvalidSpec", message)
    conditions = kstatus_conditions(
        conditions,
        ready=Verdict(False, "InvalidSpec", message),
        reconciling=Verdict(False, "InvalidSpec", "nothing to do until the spec is corrected"),
        stalled=invalid,
        generation=generation,
        now=now,
    )
    status = {
        "observedGeneration": generation,
        "phase": failed_phase,
        "conditions": [c.wire() for c in sorted(conditions, key=lambda c: c.type)],
    }
    changed = before is None or before.reason != "InvalidSpec" or before.message != message
    return status, changed or old.get("observedGeneration") != generation


async def load_or_refuse(
    ctx: Context, resource: Resource, model: type[M], key: tuple[str, str]
) -> tuple[dict[str, Any], M] | None:
    """The cached object and its validated model; None when it is gone, being deleted, or invalid.

    An invalid object gets a Failed status and one Warning event naming the fields; it is not
    retried (a new generation brings it back), and no other object waits for it.
    """
    ns, name = key
    body = ctx.cache.get(resource.kind, ns, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None  # children go with it through the garbage collector
    try:
        return body, model.model_validate(body)
    except ValidationError as err:
        message = describe(err)
        refused, changed = invalid_status(body, message, "Failed", ctx.now())
        await write_status(ctx, resource, body, refused)
        if changed:
            log.warning("%s %s/%s is invalid: %s", resource.kind, ns, name, message)
            ctx.announce(body, "Warning", "InvalidSpec", message)
        return None
