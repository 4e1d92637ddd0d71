"""How `make test-e2e` splits the e2e tests among its pytest-xdist workers.

A group runs on one worker, one test after another, on that worker's cluster: each test file is a
group (its module-scoped fixtures, e.g. test_chart.py's own cluster, are made once), and all tests
marked `serial` are one group together (HPA and KEDA timings, Lease failover: never two at once).

pytest-xdist's own `--dist loadgroup` cannot do this under pytest 9 (it renames `item._nodeid`,
which pytest 9 no longer reads, so every test becomes its own group), and the controller process
never collects, so it cannot see markers. `group_of` therefore reads the `serial` mark from the test
function and its module as pytest does (their `pytestmark`), and `GroupScheduling` (installed by
e2e/conftest.py's `pytest_xdist_make_scheduler` for `--dist loadfile`) uses it as the scope.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Iterable
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

SERIAL_GROUP = "serial"
SERIAL_MARK = "serial"


def _marks(value: Any) -> Iterable[pytest.Mark]:
    marks = value if isinstance(value, list | tuple) else [value]
    for mark in marks:
        yield getattr(mark, "mark", mark)  # a MarkDecorator or a Mark


@functools.cache
def group_of(nodeid: str) -> str:
    """SERIAL_GROUP for a test marked `serial` (on itself or its module), else its file."""
    path, _, name = nodeid.partition("::")
    function = name.split("[", 1)[0]
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    marks = [
        *_marks(getattr(module, "pytestmark", [])),
        *_marks(getattr(getattr(module, function, None), "pytestmark", [])),
    ]
    return SERIAL_GROUP if any(mark.name == SERIAL_MARK for mark in marks) else path


class GroupScheduling(LoadScopeScheduling):
    """pytest-xdist's scope scheduling with `group_of` as the scope."""

    def _split_scope(self, nodeid: str) -> str:
        return group_of(nodeid)
