"""status.rollout.route (spec.rollout.canary.gateway): where the HTTPRoute sends requests, and what its
Gateway's controller says of it in the route's status (its Accepted and ResolvedRefs conditions)."""

from __future__ import annotations

from typing import Any


def route_summary(route: dict[str, Any], live: dict[str, Any] | None) -> str:
    """status.rollout.route: where the HTTPRoute sends requests, and its Gateway's verdict on it."""
    backends = ", ".join(f"{b['name']} {b['weight']}" for b in route["spec"]["rules"][0]["backendRefs"])
    parent = route["spec"]["parentRefs"][0]
    gateway = f"{parent.get('namespace', route['metadata']['namespace'])}/{parent['name']}"
    said = [
        condition
        for p in ((live or {}).get("status") or {}).get("parents") or []
        if p.get("parentRef", {}).get("name") == parent["name"]
        for condition in p.get("conditions") or []
        if condition.get("type") in ("Accepted", "ResolvedRefs")
    ]
    refused = [c for c in said if c.get("status") != "True"]
    if refused:
        why = "; ".join(f"{c['type']} {c.get('reason', '')}: {c.get('message', '')}" for c in refused)
        return f"HTTPRoute {route['metadata']['name']} ({backends}) not accepted by Gateway {gateway}: {why}"
    if not said:
        return f"HTTPRoute {route['metadata']['name']} ({backends}): Gateway {gateway} has not reported on it"
    return f"HTTPRoute {route['metadata']['name']} ({backends}) accepted by Gateway {gateway}"
