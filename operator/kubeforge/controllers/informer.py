"""List and watch one resource into the cache, like client-go's reflector.

A cache fed only by watch events keeps ghosts: when a watch ends with 410 Gone (an API server
restart, etcd compaction, a long partition) the client lists again, and an object deleted in the
gap sends no DELETED event; a kind emptied in the gap sends nothing at all. So every list here
*replaces* the kind's store (mark and sweep) and reports what it removed as deletions: owners of
vanished children are reconciled (the children are recreated), vanished owners are forgotten.

Between lists, the watch continues from the last resourceVersion seen (bookmarks keep it fresh),
so a dropped connection costs a new watch, not a new list; only 410 costs a list.

A connection that died silently (a NAT timeout, a half-open TCP session) sends no reset either.
Every watch asks the server to end it after `watch_seconds` (45 s by default), and the client
gives up on a stream that delivered nothing for that long plus a margin (k8s/client.py): so a
silent dead watch is noticed and watched again within about a minute (client-go relies on HTTP/2
pings for the same; this client speaks HTTP/1.1).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubeforge.controllers.cache import ObjectCache
from kubeforge.controllers.workqueue import Backoff
from kubeforge.k8s.client import ApiError, Kube
from kubeforge.k8s.resources import Resource

log = logging.getLogger(__name__)
Object = dict[str, Any]
# (event type: ADDED, MODIFIED or DELETED; the object; the cached copy it replaces, if any)
OnChange = Callable[[str, Object, Object | None], None]
WATCH_SECONDS = 45  # the server ends each watch after this; it is resumed from the last version
RETRY = Backoff(base=0.2, factor=2.0, cap=30.0, jitter=0.2)


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


@dataclass
class Informer:
    kube: Kube
    cache: ObjectCache
    resource: Resource
    namespace: str | None
    on_change: OnChange
    label_selector: str | None = None
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    lists: int = 0  # how many times the kind was listed (1 at start; more after 410s)
    watch_seconds: int = WATCH_SECONDS
    # set once the first list succeeded or was refused (403): startup waits for this, not for a
    # list that a missing permission would keep failing for ever
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    refused: ApiError | None = None
    on_refused: Callable[[Informer, bool], None] | None = None

    @property
    def name(self) -> str:
        where = self.namespace or "all namespaces"
        return f"{self.resource.kind} in {where}"

    async def run(self) -> None:
        """List, then watch, forever; cancel the task to stop."""
        version: str | None = None
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._list()
                    self.synced.set()
                    self.settled.set()
                    self._refusal(None)
                version = await self._watch(version)
                failures = 0
            except Gone:
                log.info("informer %s: resourceVersion too old, listing again", self.name)
                version = None
            except ApiError as err:
                if err.status == 410:
                    version = None
                    continue
                failures += 1
                delay = RETRY.delay(failures)
                if err.status == 403:
                    self._refusal(err)
                    self.settled.set()
                if failures <= 3 or failures % 10 == 0:
                    log.warning("informer %s: %s; retrying in %.1fs", self.name, err, delay)
                await asyncio.sleep(delay)

    def _refusal(self, err: ApiError | None) -> None:
        """Record whether the API server refuses this kind (a 403: the RBAC does not grant it)."""
        was_refused = self.refused is not None
        self.refused = err
        if (err is not None) == was_refused:
            return  # no change to report
        if err is not None:
            log.warning(
                "informer %s: refused, its objects cannot be reconciled until it is granted: %s",
                self.name,
                err,
            )
        else:
            log.info("informer %s: granted again", self.name)
        if self.on_refused is not None:
            self.on_refused(self, err is not None)

    async def _list(self) -> str:
        objects, version = await self.kube.list_with_version(
            self.resource, self.namespace, self.label_selector
        )
        changed, removed = self.cache.replace(self.resource.kind, self.namespace, objects, version)
        self.lists += 1
        if self.lists > 1 and removed:
            log.info("informer %s: %d object(s) vanished while unwatched", self.name, len(removed))
        for obj in removed:
            self.on_change("DELETED", obj, None)
        for obj in changed:
            self.on_change("ADDED", obj, None)
        return version

    async def _watch(self, version: str) -> str:
        """Apply watch events to the cache; returns the version to resume from when the stream ends."""
        async for event in self.kube.watch(
            self.resource, self.namespace, version, self.label_selector, self.watch_seconds
        ):
            type_, obj = event.get("type"), event.get("object") or {}
            if type_ == "ERROR":
                if obj.get("code") == 410:
                    raise Gone
                raise ApiError(
                    int(obj.get("code") or 0), str(obj.get("reason", "")), str(obj.get("message", ""))
                )
            version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
            if type_ == "BOOKMARK":
                continue
            obj.setdefault("apiVersion", self.resource.api_version)
            obj.setdefault("kind", self.resource.kind)
            meta = obj["metadata"]
            previous = self.cache.get(self.resource.kind, meta.get("namespace", ""), meta["name"])
            if type_ == "DELETED":
                self.cache.deleted(self.resource.kind, obj)
            else:
                self.cache.upsert(self.resource.kind, obj)
            self.on_change(str(type_), obj, previous)
        return version
