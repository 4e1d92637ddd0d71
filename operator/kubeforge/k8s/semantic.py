"""Whether a live child already is what the builders want, so an unchanged child costs no write.

Two checks, both needed:

- a hash of the whole desired object, stamped on the child as an annotation when it is applied.
  A desired object that lost a field (an env var, a node selector, a limit) hashes differently,
  so it is applied again, and server-side apply then removes the field the operator no longer
  sets. Comparing only the fields still present in the desired object (a subset test) misses
  every removal.
- a subset test of the desired fields against the live object, which catches a hand edit of a
  field the operator sets (the annotation is still right, the value is not).

The API server adds defaults, status and metadata of its own; the subset test ignores them.
So does it ignore list items that admission added (a mutating webhook's sidecar container or env
var, a policy's toleration): items with a `name` are matched by name, other lists as a prefix.
Applying again would not remove them (the webhook adds them again), so counting them as a
difference would make every reconcile a write. Items the operator removed are still caught: the
hash of the desired object changes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

DESIRED_HASH_ANNOTATION = "kubeforge.io/desired-hash"
Object = dict[str, Any]


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
        if _empty(desired) and _empty(live):
            return True
        if not isinstance(live, list) or len(live) < len(desired):
            return False
        if all(isinstance(d, dict) and "name" in d for d in desired):
            # a webhook may put its sidecar anywhere: matched by name, wherever it is
            by_name = {lv.get("name"): lv for lv in live if isinstance(lv, dict)}
            return all(d["name"] in by_name and is_subset(d, by_name[d["name"]]) for d in desired)
        return all(is_subset(d, lv) for d, lv in zip(desired, live, strict=False))
    if isinstance(desired, int | float) and isinstance(live, str) and not isinstance(desired, bool):
        return str(desired) == live
    return bool(desired == live)


def desired_hash(desired: Object) -> str:
    """A stable digest of a desired object (key order does not matter; the hash annotation is left out)."""
    meta = dict(desired.get("metadata") or {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != DESIRED_HASH_ANNOTATION}
    meta["annotations"] = annotations
    canonical = json.dumps({**desired, "metadata": meta}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:20]


def stamped(desired: Object) -> Object:
    """`desired` with its hash annotation, as it is applied."""
    meta = dict(desired["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), DESIRED_HASH_ANNOTATION: desired_hash(desired)}
    return {**desired, "metadata": meta}


def applied_hash(live: Object | None) -> str | None:
    """The hash of the desired object last applied to `live`, if it carries one."""
    if live is None:
        return None
    return (live["metadata"].get("annotations") or {}).get(DESIRED_HASH_ANNOTATION)


def up_to_date(desired: Object, live: Object | None) -> bool:
    """Whether applying `desired` (stamped) would change nothing: same hash, and no hand edit since."""
    if live is None:
        return False
    if applied_hash(desired) != applied_hash(live):
        return False
    return is_subset({k: v for k, v in desired.items() if k not in ("apiVersion", "kind")}, live)


def controller_ref(obj: Object) -> Object | None:
    """An object's controller: the ownerReference with controller: true, if any."""
    return next((ref for ref in obj["metadata"].get("ownerReferences") or [] if ref.get("controller")), None)


def controller_uid(obj: Object) -> str | None:
    """The UID of an object's controller, if any."""
    ref = controller_ref(obj)
    return ref.get("uid") if ref else None


def describe_controller(obj: Object) -> str:
    """Who controls `obj`, in words for a status message."""
    ref = controller_ref(obj)
    if ref:
        return f"controlled by {ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})"
    return "not controlled by any owner"
