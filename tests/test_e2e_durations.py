"""e2e/durations.py: the e2e groups' times, which order the groups handed to the xdist workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from e2e import durations, groups

TABLE = """seconds\toutcome\tworker\ttest
90.0\tpassed\tgw1\te2e/test_a.py::test_slow
30.5\tpassed\tgw0\te2e/test_loop.py::test_hpa[x]
20.0\tpassed\tgw0\te2e/test_b.py::test_failover
5.0\tfailed\tgw2\te2e/test_a.py::test_quick
4.0\tpassed\t-\te2e/test_c.py::test_other
"""
SERIAL = {"e2e/test_loop.py::test_hpa[x]", "e2e/test_b.py::test_failover"}


def _group(nodeid: str) -> str:
    return groups.SERIAL_GROUP if nodeid in SERIAL else nodeid.split("::")[0]


def test_the_times_are_summed_per_group() -> None:
    assert durations.group_seconds(TABLE, _group) == {
        "e2e/test_a.py": 95.0,
        "serial": 50.5,
        "e2e/test_c.py": 4.0,
    }


@pytest.mark.parametrize(
    ("nodeid", "group"),
    [
        # the module is marked serial
        ("e2e/test_autoscaling_loop.py::test_hpa_scales_out_on_inferences_per_second", "serial"),
        # one function of its module is
        (
            "e2e/test_faults.py::test_two_replicas_fail_over_and_a_partitioned_leader_never_writes_after_its_lease",
            "serial",
        ),
        ("e2e/test_faults.py::test_sigkill_at_random_moments_during_a_burst", "e2e/test_faults.py"),
        (
            "e2e/test_chart.py::test_the_service_account_can[patch deployments.apps in chart-serve]",
            "e2e/test_chart.py",
        ),
    ],
)
def test_a_test_is_in_the_serial_group_when_it_or_its_module_is_marked_serial(
    nodeid: str, group: str
) -> None:
    assert groups.group_of(nodeid) == group


def test_the_file_lists_the_longest_group_first_and_reads_back(tmp_path: Path) -> None:
    text = durations.render(durations.group_seconds(TABLE, _group))
    assert text.splitlines() == ["seconds\tgroup", "95\te2e/test_a.py", "50\tserial", "4\te2e/test_c.py"]
    path = tmp_path / "durations.tsv"
    path.write_text(text)
    assert durations.read(path) == {"e2e/test_a.py": 95.0, "serial": 50.0, "e2e/test_c.py": 4.0}
    assert durations.read(tmp_path / "missing.tsv") == {}


def test_the_committed_file_names_only_groups_that_exist() -> None:
    root = Path(durations.E2E_DIR).parent
    for group in durations.read():
        assert group == "serial" or (root / group).is_file(), group
