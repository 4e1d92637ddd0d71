"""What every reconciler needs: the API facade, the cache, settings, the clock, the queues.

`ensure` and `ensure_absent` are the only ways a reconciler writes a child, and both keep the
ownership rule: the operator creates, applies to and deletes only objects that are absent or
controlled by the owner's UID. Anything else with the child's name is a `ChildConflict`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubeforge.controllers.analysis import Prometheus
from kubeforge.controllers.cache import ObjectCache
from kubeforge.controllers.metrics import OperatorMetrics
from kubeforge.controllers.modelprobe import ModelProber
from kubeforge.controllers.rollout import OperatorRollouts
from kubeforge.k8s.client import Kube
from kubeforge.k8s.resources import Resource, resource_for
from kubeforge.k8s.semantic import controller_ref, controller_uid, describe_controller, stamped, up_to_date
from kubeforge.redact import redact
from kubeforge.settings import Settings

Object = dict[str, Any]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class ChildConflict(Exception):
    """A child's name is taken by an object the owner does not control; that object is left alone."""

    def __init__(self, kind: str, namespace: str, name: str, holder: str) -> None:
        self.kind = kind
        self.namespace = namespace
        self.name = name
        super().__init__(
            f"{kind} {namespace}/{name} already exists and is {holder}; it is left untouched: "
            "rename or delete it, or rename this object"
        )


class PredecessorChild(Exception):
    """The name is held by the child of a deleted owner of the same kind and name (a delete and
    re-create): the garbage collector removes it shortly, so this is retried, not reported."""


def _owner_uid(desired: Object) -> str:
    uid = controller_uid(desired)
    assert uid is not None, "every child is built with a controller owner reference"
    return uid


def check_ownership(desired: Object, live: Object | None) -> None:
    """Raise unless `live` is absent or controlled by the owner `desired` names."""
    if live is None or controller_uid(live) == _owner_uid(desired):
        return
    meta = desired["metadata"]
    ours, theirs = controller_ref(desired), controller_ref(live)
    assert ours is not None
    if theirs is not None and (theirs.get("kind"), theirs.get("name")) == (ours["kind"], ours["name"]):
        raise PredecessorChild(
            f"{desired['kind']} {meta['namespace']}/{meta['name']}: {describe_controller(live)}"
        )
    raise ChildConflict(desired["kind"], meta["namespace"], meta["name"], describe_controller(live))


@dataclass
class Context:
    kube: Kube
    settings: Settings
    cache: ObjectCache = field(default_factory=ObjectCache)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    now: Callable[[], datetime] = utcnow
    rollouts: OperatorRollouts | None = None
    prober: ModelProber = field(default_factory=ModelProber)
    # canary analysis queries (controllers/analysis.py); made from the settings when not given
    prometheus: Prometheus | None = None
    # (uid, fields) of objects whose unknown fields were reported (controllers/invalid.py)
    reported_unknown: set[tuple[str, str]] = field(default_factory=set)
    # the watches of these kinds that cover this namespace and have not listed yet (refused, or
    # still failing): the cache cannot say what exists there (set by the runtime)
    unwatched: Callable[[tuple[str, ...], str], list[str]] = lambda kinds, namespace: []
    _events: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.rollouts is None:
            self.rollouts = OperatorRollouts(self.settings.operator_rollouts)
        if self.prometheus is None:
            self.prometheus = Prometheus(self.settings.prometheus_address)
        if self.metrics.cache_objects is None:
            self.metrics.cache_objects = self.cache.counts  # kubeforge_cache_objects, read at scrape time

    def announce(self, owner: Object, type_: str, reason: str, message: str) -> None:
        """Post an Event in the background: Events are best effort and never delay a reconcile.
        `view` reads Events: the message is redacted (`kubeforge.redact`)."""
        task = asyncio.create_task(self.kube.event(owner, type_, reason, redact(message)))
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def flush_events(self) -> None:
        """Wait for the Events still being posted (at shutdown)."""
        await asyncio.gather(*self._events, return_exceptions=True)

    async def live(self, resource: Resource, namespace: str, name: str) -> Object | None:
        """The object of that name: the cache holds every child we labelled, so a miss is read live
        (a user's object of the same name carries no label of ours and is never cached)."""
        cached = self.cache.get(resource.kind, namespace, name)
        if cached is not None:
            return cached
        return await self.kube.get(resource, namespace, name)

    async def _ours(self, desired: Object) -> tuple[Object, Object | None]:
        """`desired` as applied (with its hash) and the live child of its name, checked to be ours."""
        desired = stamped(desired)
        meta = desired["metadata"]
        resource = resource_for(desired["apiVersion"], desired["kind"])
        live = await self.live(resource, meta["namespace"], meta["name"])
        check_ownership(desired, live)
        return desired, live

    async def ensure(self, desired: Object) -> Object:
        """Apply `desired` unless the live child already matches it (then: no write).

        Raises ChildConflict when the name is taken by an object that the owner does not control.
        """
        desired, live = await self._ours(desired)
        if live is not None:
            self.cache.upsert(desired["kind"], live)  # ours: kinds that are not watched are cached here
        if up_to_date(desired, live):
            assert live is not None
            return live
        applied = await self.kube.apply(desired, force=live is not None)
        self.cache.upsert(desired["kind"], applied)
        return applied

    async def create_child(self, desired: Object) -> Object:
        """Create `desired` unless our child of that name exists (then it is returned as it is).

        For children whose spec cannot change once created (a Job's pod template).
        """
        desired, live = await self._ours(desired)
        if live is not None:
            return live
        created = await self.kube.apply(desired, force=False)
        self.cache.upsert(desired["kind"], created)
        return created

    async def ensure_optional(
        self, resource: Resource, desired: Object | None, namespace: str, name: str, owner_uid: str
    ) -> None:
        """`ensure(desired)`, or, when the spec (or a setting) wants none (`desired` None), remove our
        child `name` of that kind, if any."""
        if desired is not None:
            await self.ensure(desired)
        else:
            await self.ensure_absent(resource, namespace, name, owner_uid)

    async def ensure_absent(self, resource: Resource, namespace: str, name: str, owner_uid: str) -> None:
        """Delete a child we no longer want (e.g. the HPA once autoscaling is turned off).

        Only our own child is deleted, and only that very object (a UID precondition); an object of
        the same name that someone else controls is not ours to remove.
        """
        live = self.cache.get(resource.kind, namespace, name)
        if live is None or controller_uid(live) != owner_uid:
            return
        await self.kube.delete(resource, namespace, name, uid=live["metadata"]["uid"])
        self.cache.remove(resource.kind, namespace, name)

    async def delete_child(self, resource: Resource, child: Object) -> None:
        """Delete one child that the caller found in the cache (and checked to be ours)."""
        meta = child["metadata"]
        await self.kube.delete(resource, meta["namespace"], meta["name"], uid=meta["uid"])
        self.cache.remove(resource.kind, meta["namespace"], meta["name"])
