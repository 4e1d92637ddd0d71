"""The e2e groups' times: the order in which `make test-e2e` hands groups to its workers.

`python -m e2e.durations` (`make e2e-durations`) sums the last full run's table of test times
(.times/e2e.tsv, written by tests/harness.py) per group into e2e/durations.tsv, longest first.
Commit it when the suite's shape changes: a fresh clone (CI) has no table of its own.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from e2e import groups

E2E_DIR = Path(__file__).resolve().parent
E2E_DURATIONS = E2E_DIR / "durations.tsv"
LAST_RUN = E2E_DIR.parent / ".times" / "e2e.tsv"
HEADER = "seconds\tgroup"


def read(path: Path = E2E_DURATIONS) -> dict[str, float]:
    """group -> seconds, from a durations file (empty when there is none)."""
    if not path.is_file():
        return {}
    rows = (line.split("\t") for line in path.read_text().splitlines()[1:] if line.strip())
    return {group: float(seconds) for seconds, group in rows}


def group_seconds(times_table: str, group_of: Callable[[str], str] = groups.group_of) -> dict[str, float]:
    """Sum a table of test times (tests/harness.py TimesTable) per group (e2e/groups.py)."""
    totals: dict[str, float] = defaultdict(float)
    for line in times_table.splitlines()[1:]:
        seconds, _outcome, _worker, nodeid = line.split("\t")
        totals[group_of(nodeid)] += float(seconds)
    return dict(totals)


def render(totals: dict[str, float]) -> str:
    rows = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return "\n".join([HEADER, *(f"{seconds:.0f}\t{group}" for group, seconds in rows)]) + "\n"


def main() -> int:
    if not LAST_RUN.is_file():
        print(f"no {LAST_RUN}: run `make test-e2e` first", file=sys.stderr)
        return 1
    E2E_DURATIONS.write_text(render(group_seconds(LAST_RUN.read_text())))
    print(f"wrote {E2E_DURATIONS.relative_to(E2E_DIR.parent)} from {LAST_RUN.relative_to(E2E_DIR.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
