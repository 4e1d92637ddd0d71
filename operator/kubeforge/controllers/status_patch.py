"""Write a status only when it changed: a no-op reconcile makes no API call."""

from __future__ import annotations

import logging
from typing import Any

from kubeforge.controllers.context import Context
from kubeforge.k8s.resources import Resource
from kubeforge.redact import redact

log = logging.getLogger(__name__)


async def write_status(
    ctx: Context,
    resource: Resource,
    body: dict[str, Any],
    status: dict[str, Any],
    *,
    precondition: bool = False,
) -> dict[str, Any]:
    """Merge-patch the status subresource with `status`, clearing keys that are gone.

    Returns the object as it now is (`body` itself when nothing changed: no API call). With
    `precondition`, the write is refused (a retryable 409) if the object changed since `body`
    was read, so a decision recorded in status is never based on a stale view. Every string in
    it is redacted (`kubeforge.redact`): `view` reads the status, so no URL's credential may be in it.
    """
    status = _redacted(status)
    old = body.get("status") or {}
    if status == old:
        return body
    patch = merge_patch(old, status)
    if log.isEnabledFor(logging.DEBUG):
        changed = sorted(k for k in set(old) | set(status) if old.get(k) != status.get(k))
        log.debug(
            "status of %s %s/%s changed: %s",
            resource.kind,
            body["metadata"].get("namespace"),
            body["metadata"]["name"],
            changed,
        )
    meta = body["metadata"]
    version = meta.get("resourceVersion") if precondition else None
    updated = await ctx.kube.patch_status(resource, meta["namespace"], meta["name"], patch, version)
    ctx.cache.upsert(resource.kind, updated)
    return updated


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: a key that is gone is null, at
    every depth (an endpoint removed from status.endpoints too, not only a top-level field)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        patch[key] = (
            merge_patch(before, value) if isinstance(value, dict) and isinstance(before, dict) else value
        )
    return patch


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return value
