"""What every reconciler needs: the API facade, the cache, settings, the clock, the queues."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubeforge.controllers.cache import ObjectCache
from kubeforge.controllers.metrics import OperatorMetrics
from kubeforge.k8s.client import Kube
from kubeforge.k8s.resources import Resource
from kubeforge.k8s.semantic import up_to_date
from kubeforge.settings import Settings

Object = dict[str, Any]


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class Context:
    kube: Kube
    settings: Settings
    cache: ObjectCache = field(default_factory=ObjectCache)
    metrics: OperatorMetrics = field(default_factory=OperatorMetrics)
    now: Callable[[], datetime] = utcnow
    _events: set[asyncio.Task[None]] = field(default_factory=set)

    def announce(self, owner: Object, type_: str, reason: str, message: str) -> None:
        """Post an Event in the background: Events are best effort and never delay a reconcile."""
        task = asyncio.create_task(self.kube.event(owner, type_, reason, message))
        self._events.add(task)
        task.add_done_callback(self._events.discard)

    async def ensure(self, desired: Object) -> Object:
        """Apply `desired` unless the cached live object already matches it (then: no API call)."""
        meta = desired["metadata"]
        live = self.cache.get(desired["kind"], meta["namespace"], meta["name"])
        if up_to_date(desired, live):
            assert live is not None
            return live
        applied = await self.kube.apply(desired)
        self.cache.upsert(desired["kind"], applied)
        return applied

    async def ensure_absent(self, resource: Resource, namespace: str, name: str) -> None:
        """Delete a child we no longer want (e.g. the HPA once autoscaling is turned off)."""
        if self.cache.get(resource.kind, namespace, name) is None:
            return
        await self.kube.delete(resource, namespace, name)
        self.cache.remove(resource.kind, namespace, name)
