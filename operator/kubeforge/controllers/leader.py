"""Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does it.

Every replica watches and keeps its cache warm; only the holder of the Lease reconciles and
writes. The holder renews every `retry_period`; it sends no write once `renew_deadline` has passed
since the start of its last successful renewal, and a standby takes the Lease only after
`lease_duration` has passed since it last saw the Lease change (its own clock: no trust in the
other replica's). Each write may take what is left of the Lease it was sent under, less a margin
(`write_budget`: the Kube facade gives it to urllib3 as the call's total time and to the API
server as `?timeout=`), so a partitioned old leader has finished or abandoned every write before
another replica can hold the Lease, while a slow write on a healthy leader (a busy API server
allocating ClusterIPs) gets up to about 10 s instead of a fixed few.

Defaults: lease 12 s, renew deadline 7 s, retry 1.5 s: a write gets between 4 s (sent at the renew
deadline) and about 11 s (sent just after a renewal); a SIGKILLed leader is replaced within about
12-14 s; a leader that shuts down releases the Lease and is replaced within one retry period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubeforge.k8s.client import ApiError, Kube

log = logging.getLogger(__name__)
Object = dict[str, Any]
# a write must be over this long before the Lease could pass on (clock rates differ a little)
WRITE_MARGIN = 1.0
# the least time any write the fence lets through gets (a fixed 3 s was the timeout before)
MIN_WRITE_SECONDS = 3.0


@dataclass(frozen=True)
class LeaseSettings:
    namespace: str
    name: str = "kubeforge-leader"
    identity: str = ""
    lease_duration: float = 12.0
    renew_deadline: float = 7.0
    retry_period: float = 1.5

    def __post_init__(self) -> None:
        if not self.renew_deadline + MIN_WRITE_SECONDS + WRITE_MARGIN <= self.lease_duration:
            raise ValueError(
                f"the renew deadline ({self.renew_deadline}s) must leave a write sent at it "
                f"{MIN_WRITE_SECONDS}s and a {WRITE_MARGIN}s margin within the lease duration "
                f"({self.lease_duration}s)"
            )
        if not self.retry_period < self.renew_deadline:
            raise ValueError("the retry period must be shorter than the renew deadline")


def default_identity() -> str:
    """The pod's name (downward API) where there is one, else host and a random suffix."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def _micro_time(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Acquires and renews the Lease; calls `on_started` / `on_stopped` on changes of leadership."""

    def __init__(
        self,
        kube: Kube,
        settings: LeaseSettings,
        on_started: Callable[[], Awaitable[None]],
        on_stopped: Callable[[], Awaitable[None]],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.identity = settings.identity or default_identity()
        self._on_started = on_started
        self._on_stopped = on_stopped
        # monotonic, and readable from any thread: the fence is checked again as a call is sent
        self._clock = clock or time.monotonic
        self._leading = False
        self._renewed_at: float | None = None  # local time at the start of the last successful renewal
        self._observed: tuple[str, float] | None = None  # (the Lease's resourceVersion, when it was seen)
        self.transitions = 0

    @property
    def is_leader(self) -> bool:
        return self._leading

    def may_write(self) -> bool:
        """Whether this replica may write now: the leader, within its renew deadline."""
        return (
            self._leading
            and self._renewed_at is not None
            and self._clock() < self._renewed_at + self.settings.renew_deadline
        )

    def write_budget(self) -> float:
        """The seconds a write sent now may take: until a margin before the Lease it is sent under
        could pass to another replica; 0 when this replica may not send one."""
        if not self.may_write() or self._renewed_at is None:
            return 0.0
        return self._renewed_at + self.settings.lease_duration - WRITE_MARGIN - self._clock()

    async def run(self) -> None:
        """Try to acquire or renew every retry period, forever (cancel to stop; then call release)."""
        while True:
            started = self._clock()
            try:
                held = await self._try_acquire_or_renew(started)
            except ApiError as err:
                log.warning("leader election: %s", err)
                held = False
            if held:
                self._renewed_at = started
                if not self._leading:
                    self._leading = True
                    log.info("leader election: %s now leads (Lease %s)", self.identity, self._where())
                    await self._on_started()
            elif self._leading and not self.may_write():
                self._leading = False
                log.warning("leader election: %s lost the Lease %s", self.identity, self._where())
                await self._on_stopped()
            await asyncio.sleep(self.settings.retry_period)

    def _where(self) -> str:
        return f"{self.settings.namespace}/{self.settings.name}"

    async def _try_acquire_or_renew(self, now: float) -> bool:
        s = self.settings
        lease = await self.kube.lease(s.namespace, s.name)
        # what was read is stamped with the time the read returned, not when it was sent: a slow
        # GET must not make a live holder's Lease look older than it is
        seen = self._clock()
        wall = datetime.now(UTC)
        if lease is None:
            await self.kube.write_lease(self._record(None, wall, transitions=0), create=True)
            return True
        spec = lease.get("spec") or {}
        version = lease["metadata"]["resourceVersion"]
        if self._observed is None or self._observed[0] != version:
            self._observed = (version, seen)  # the Lease changed: its holder is alive as of then
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or s.lease_duration)
        if holder and holder != self.identity and now < self._observed[1] + duration:
            return False  # someone else holds a live Lease
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if holder == self.identity else 1)
        acquired = spec.get("acquireTime") if holder == self.identity else None
        record = self._record(lease, wall, transitions, acquired)
        try:
            updated = await self.kube.write_lease(record, create=False)
        except ApiError as err:
            if err.status == 409:
                return False  # another replica wrote first
            raise
        self._observed = (updated["metadata"]["resourceVersion"], now)
        if holder != self.identity:
            self.transitions += 1
        return True

    def _record(
        self, lease: Object | None, wall: datetime, transitions: int, acquired: str | None = None
    ) -> Object:
        s = self.settings
        metadata: Object = {"name": s.name, "namespace": s.namespace}
        if lease is not None:
            metadata["resourceVersion"] = lease["metadata"]["resourceVersion"]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(s.lease_duration),
                "acquireTime": acquired or _micro_time(wall),
                "renewTime": _micro_time(wall),
                "leaseTransitions": transitions,
            },
        }

    async def release(self) -> None:
        """Give the Lease up at shutdown, so a standby takes over within one retry period."""
        if not self._leading:
            return
        self._leading = False
        s = self.settings
        try:
            lease = await self.kube.lease(s.namespace, s.name)
            if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = dict(lease["spec"])
            spec.update(holderIdentity=None, leaseDurationSeconds=1)
            await self.kube.write_lease({**lease, "spec": spec}, create=False)
            log.info("leader election: %s released the Lease %s", self.identity, self._where())
        except ApiError as err:
            log.warning("leader election: could not release the Lease: %s", err)
