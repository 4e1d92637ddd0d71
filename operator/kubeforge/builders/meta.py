"""Names, labels and owner references shared by every child object."""

from __future__ import annotations

from typing import Any

from kubeforge import API_VERSION

PART_OF = "kubeforge"
MANAGED_BY = "kubeforge"
# The label every child carries, naming its owner; the operator watches children by it.
OWNER_KIND_LABEL = "kubeforge.io/owner-kind"
OWNER_NAME_LABEL = "kubeforge.io/owner-name"

Object = dict[str, Any]


def selector_labels(kind: str, name: str) -> dict[str, str]:
    """Labels that select an owner's pods; stable for the owner's life (Deployment selectors are immutable)."""
    return {OWNER_KIND_LABEL: kind.lower(), OWNER_NAME_LABEL: name}


def recommended_labels(kind: str, name: str, component: str, app: str) -> dict[str, str]:
    """The app.kubernetes.io/* labels plus the owner labels."""
    return {
        "app.kubernetes.io/name": app,
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(kind, name),
    }


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    """A controller owner reference, so the garbage collector deletes the child with its owner."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(name: str, namespace: str, labels: dict[str, str], owner: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [owner]}
