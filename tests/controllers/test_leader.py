"""The Lease timings keep a partitioned leader from writing after a standby could take over."""

from __future__ import annotations

from typing import Any, cast

import pytest

from kubeforge.controllers.leader import MIN_WRITE_SECONDS, WRITE_MARGIN, LeaderElector, LeaseSettings
from kubeforge.k8s.client import Kube


def test_the_defaults_leave_room_for_a_write_sent_at_the_deadline() -> None:
    lease = LeaseSettings(namespace="kubeforge-system")
    assert lease.renew_deadline + MIN_WRITE_SECONDS + WRITE_MARGIN <= lease.lease_duration
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


def _leading(now: list[float]) -> LeaderElector:
    async def nothing() -> None:
        return None

    elector = LeaderElector(
        cast(Kube, None), LeaseSettings(namespace="ns"), nothing, nothing, clock=lambda: now[0]
    )
    elector._leading = True
    elector._renewed_at = 100.0  # the last renewal started at t=100
    return elector


def test_a_write_may_take_what_is_left_of_the_lease() -> None:
    now = [100.5]
    elector = _leading(now)
    # just after a renewal: most of the 12 s Lease, less the margin
    assert elector.write_budget() == pytest.approx(12 - WRITE_MARGIN - 0.5)
    now[0] = 106.9  # just before the renew deadline: still at least the minimum
    assert elector.write_budget() >= MIN_WRITE_SECONDS
    now[0] = 107.0  # past it: nothing may be sent
    assert elector.write_budget() == 0.0
    assert not elector.may_write()


def test_kopf_and_the_lease_share_the_pod_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf left to itself names the operator after the passwd entry of its uid, which the images'
    non-root uids do not have (getpwuid fails: the operator image would not start)."""
    from kubeforge.controllers import runner

    seen: dict[str, Any] = {}
    monkeypatch.setenv("POD_NAME", "kubeforge-7d9f-abcde")
    monkeypatch.setattr(runner.kopf, "run", lambda **kwargs: seen.update(kwargs))
    assert runner.run_operator((), "", 0, False, leader_election=True) == 0
    assert seen["identity"] == "kubeforge-7d9f-abcde"
    assert seen["memo"].options["lease"].identity == "kubeforge-7d9f-abcde"
