"""The Lease timings keep a partitioned leader from writing after a standby could take over."""

from __future__ import annotations

import pytest

from kubeforge.controllers.leader import LeaseSettings
from kubeforge.k8s.client import WRITE_TIMEOUT


def test_the_defaults_leave_room_for_the_longest_write() -> None:
    lease = LeaseSettings(namespace="kubeforge-system")
    assert lease.renew_deadline + sum(WRITE_TIMEOUT) < lease.lease_duration
    assert lease.retry_period < lease.renew_deadline
    assert lease.lease_duration + lease.retry_period < 15  # failover target: under 15 s


@pytest.mark.parametrize(
    ("duration", "deadline", "retry"),
    [(8.0, 7.0, 1.5), (12.0, 7.0, 7.0)],
    ids=["deadline-plus-write-past-the-lease", "retry-not-below-deadline"],
)
def test_unsafe_timings_are_refused(duration: float, deadline: float, retry: float) -> None:
    with pytest.raises(ValueError):
        LeaseSettings(namespace="ns", lease_duration=duration, renew_deadline=deadline, retry_period=retry)
