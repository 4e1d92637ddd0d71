"""Bad input becomes status and an Event that name the field; never a crash, never a retry loop.

Version skew. The API server fills a newer CRD's schema defaults into every object it serves, and
`helm rollback` never rolls CRDs back, so an operator reads fields a newer release added. A reader
ignores fields it does not know, as Go decoders do (reported once per object and field set as an
`UnknownFields` Warning): the schema refuses unknown fields at apply time, not the operator's read.

A refused spec never erases what status knew: the `InvalidSpec` conditions are merged into it,
and a TrainingJob keeps its phase (its running attempt is left alone until the spec is fixed).
"""

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
        path = _path(e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {msg}" if path else msg)
    return "; ".join(parts)[:MAX_MESSAGE]


def invalid_status(
    body: dict[str, Any], message: str, failed_phase: str, now: Any, keep_phase: bool = False
) -> tuple[dict[str, Any], bool]:
    """(status, changed) for an object whose spec cannot be used: the status it had, every field
    kept, with the InvalidSpec conditions; its phase becomes `failed_phase` unless `keep_phase`
    and it has one."""
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
        **old,
        "observedGeneration": generation,
        "phase": old["phase"] if keep_phase and old.get("phase") else failed_phase,
        "conditions": [c.wire() for c in sorted(conditions, key=lambda c: c.type)],
    }
    changed = before is None or before.reason != "InvalidSpec" or before.message != message
    return status, changed or old.get("observedGeneration") != generation


def _path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def read_tolerantly(model: type[M], body: dict[str, Any]) -> tuple[M, list[str]]:
    """The model of an object as the API server serves it, and the fields this release does not
    know (ignored). Raises ValidationError for anything else wrong, naming only that."""
    try:
        return model.model_validate(body), []
    except ValidationError as err:
        unknown = [_path(e["loc"]) for e in err.errors() if e["type"] == "extra_forbidden"]
        if not unknown:
            raise
    return model.model_validate(body, extra="ignore"), sorted(unknown)


def _report_unknown(ctx: Context, resource: Resource, body: dict[str, Any], unknown: list[str]) -> None:
    meta = body["metadata"]
    key = (meta.get("uid") or "", ",".join(unknown))
    if key in ctx.reported_unknown:
        return
    ctx.reported_unknown.add(key)
    message = (
        f"{', '.join(unknown)}: not known to this operator release, ignored (a newer CRD or client "
        "wrote it; upgrade the operator to use it)"
    )[:MAX_MESSAGE]
    log.warning("%s %s/%s: %s", resource.kind, meta.get("namespace"), meta["name"], message)
    ctx.announce(body, "Warning", "UnknownFields", message)


async def load_or_refuse(
    ctx: Context, resource: Resource, model: type[M], key: tuple[str, str], keep_phase: bool = False
) -> tuple[dict[str, Any], M] | None:
    """The cached object and its validated model; None when it is gone, being deleted, or invalid.

    Fields this release does not know are ignored (and reported once). An invalid object gets
    the InvalidSpec conditions (its phase Failed, unless `keep_phase` and it has one) and one
    Warning event naming the fields; it is not retried (a new generation brings it back), and no
    other object waits for it.
    """
    ns, name = key
    body = ctx.cache.get(resource.kind, ns, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return None  # children go with it through the garbage collector
    try:
        validated, unknown = read_tolerantly(model, body)
    except ValidationError as err:
        message = describe(err)
        refused, changed = invalid_status(body, message, "Failed", ctx.now(), keep_phase)
        await write_status(ctx, resource, body, refused)
        if changed:
            log.warning("%s %s/%s is invalid: %s", resource.kind, ns, name, message)
            ctx.announce(body, "Warning", "InvalidSpec", message)
        return None
    if unknown:
        _report_unknown(ctx, resource, body, unknown)
    return body, validated
