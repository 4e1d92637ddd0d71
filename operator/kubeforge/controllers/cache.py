"""An informer-like cache of the objects the operator watches, indexed by owner.

kopf's watch streams feed it; reconcilers read from it instead of the API server, so a
reconcile of an unchanged object costs no API call at all. Our own writes update it at once
with the server's response, so a reconcile never acts on a version older than its own write.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from kubeforge.builders.meta import OWNER_KIND_LABEL, OWNER_NAME_LABEL

Object = dict[str, Any]
Key = tuple[str, str, str]  # kind, namespace, name
OwnerKey = tuple[str, str, str]  # owner kind (lower case), namespace, owner name


def _rv(obj: Object) -> int:
    try:
        return int(obj["metadata"].get("resourceVersion", "0"))
    except (TypeError, ValueError):
        return 0


# what no reconciler reads, and what makes up most of an object's size
DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def slim(kind: str, obj: Object) -> Object:
    """The object without what the reconcilers never read: managedFields, kubectl's last-applied
    annotation, and a pod's spec (status and metadata say everything the status reducers need)."""
    meta = obj["metadata"]
    annotations = meta.get("annotations") or {}
    if (
        "managedFields" not in meta
        and not any(a in annotations for a in DROPPED_ANNOTATIONS)
        and kind != "Pod"
    ):
        return obj
    meta = {k: v for k, v in meta.items() if k != "managedFields"}
    if any(a in annotations for a in DROPPED_ANNOTATIONS):
        meta["annotations"] = {k: v for k, v in annotations.items() if k not in DROPPED_ANNOTATIONS}
    out = {k: v for k, v in obj.items() if k != "metadata" and not (kind == "Pod" and k == "spec")}
    out["metadata"] = meta
    return out


# how many deleted objects are remembered (by UID) against a late write response
TOMBSTONES = 10_000


class ObjectCache:
    def __init__(self) -> None:
        self._objects: dict[Key, Object] = {}
        self._by_owner: dict[tuple[str, OwnerKey], set[Key]] = defaultdict(set)
        # UIDs of objects the API server said were deleted: a write's response that arrives after
        # the DELETED event (the write raced the deletion) must not bring the object back
        self._deleted: dict[str, None] = {}

    @staticmethod
    def _owner(obj: Object) -> OwnerKey | None:
        labels = obj["metadata"].get("labels") or {}
        kind, name = labels.get(OWNER_KIND_LABEL), labels.get(OWNER_NAME_LABEL)
        if not kind or not name:
            return None
        return kind, obj["metadata"].get("namespace", ""), name

    def upsert(self, kind: str, obj: Object) -> None:
        """Store `obj` unless the cache already holds a newer version of it."""
        obj = slim(kind, obj)
        meta = obj["metadata"]
        key = (kind, meta.get("namespace", ""), meta["name"])
        if meta.get("uid") in self._deleted:
            return  # a UID never comes back: this is a late copy of a deleted object
        current = self._objects.get(key)
        if current is not None and _rv(current) > _rv(obj) > 0:
            return
        if current is not None and current["metadata"].get("uid") != meta.get("uid"):
            self._unindex(kind, key, current)
        self._objects[key] = obj
        owner = self._owner(obj)
        if owner is not None:
            self._by_owner[(kind, owner)].add(key)

    def remove(self, kind: str, namespace: str, name: str) -> None:
        key = (kind, namespace, name)
        obj = self._objects.pop(key, None)
        if obj is not None:
            self._unindex(kind, key, obj)

    def deleted(self, kind: str, obj: Object) -> None:
        """The API server says `obj` is gone (a DELETED event, or absent from a fresh list)."""
        meta = obj["metadata"]
        current = self._objects.get((kind, meta.get("namespace", ""), meta["name"]))
        if current is None or current["metadata"].get("uid") == meta.get("uid"):
            self.remove(kind, meta.get("namespace", ""), meta["name"])
        uid = meta.get("uid")
        if uid:
            self._deleted[uid] = None
            if len(self._deleted) > TOMBSTONES:
                del self._deleted[next(iter(self._deleted))]

    def _unindex(self, kind: str, key: Key, obj: Object) -> None:
        owner = self._owner(obj)
        if owner is not None:
            keys = self._by_owner.get((kind, owner))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_owner[(kind, owner)]

    def replace(
        self, kind: str, namespace: str | None, objects: list[Object], list_version: str
    ) -> tuple[list[Object], list[Object]]:
        """Make the cache hold exactly `objects` for `kind` (in `namespace`, or everywhere when None),
        as a fresh list from the API server at `list_version` says.

        Returns (changed or new, removed): the removed are the ghosts of objects deleted while no
        watch was looking, which never sent a DELETED event. An object cached from a write newer
        than the list is kept (its watch event follows).
        """
        listed = {(kind, o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objects}
        snapshot = _rv({"metadata": {"resourceVersion": list_version}})
        stale = [
            key
            for key, obj in self._objects.items()
            if key[0] == kind
            and (namespace is None or key[1] == namespace)
            and key not in listed
            and not _rv(obj) > snapshot > 0
        ]
        removed = [self._objects[key] for key in stale]
        for obj in removed:
            self.deleted(kind, obj)
        changed = []
        for obj in objects:
            meta = obj["metadata"]
            current = self._objects.get((kind, meta.get("namespace", ""), meta["name"]))
            if current is None or current["metadata"].get("resourceVersion") != meta.get("resourceVersion"):
                changed.append(obj)
                self.upsert(kind, obj)
        return changed, removed

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        return self._objects.get((kind, namespace, name))

    def owned(self, kind: str, owner_kind: str, namespace: str, owner_name: str) -> list[Object]:
        keys = self._by_owner.get((kind, (owner_kind.lower(), namespace, owner_name)), set())
        return [self._objects[k] for k in sorted(keys) if k in self._objects]

    def keys(self, kind: str) -> list[tuple[str, str]]:
        """(namespace, name) of every cached object of a kind."""
        return [(ns, name) for k, ns, name in self._objects if k == kind]

    def count(self, kind: str) -> int:
        return sum(1 for k in self._objects if k[0] == kind)

    def counts(self) -> Counter[str]:
        """Cached objects by kind (one pass; read by the metrics at scrape time)."""
        return Counter(kind for kind, _, _ in self._objects)
