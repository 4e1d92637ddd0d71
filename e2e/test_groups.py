"""The groups the e2e workers get (e2e/groups.py) agree with pytest's own reading of the marks."""

from __future__ import annotations

import pytest

from e2e import groups

pytestmark = pytest.mark.e2e


def test_every_e2e_test_is_grouped_by_its_serial_mark_or_its_file(request: pytest.FixtureRequest) -> None:
    items = [item for item in request.session.items if item.nodeid.startswith("e2e/")]
    assert items
    for item in items:
        serial = item.get_closest_marker(groups.SERIAL_MARK) is not None
        expected = groups.SERIAL_GROUP if serial else item.nodeid.split("::", 1)[0]
        assert groups.group_of(item.nodeid) == expected, item.nodeid
