"""e2e/procs.py: a process stopped on purpose reports no exit, so a restart is judged afresh."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from e2e.procs import ManagedProcess


def test_a_stopped_process_reports_no_exit_until_it_runs_again(tmp_path: Path) -> None:
    proc = ManagedProcess("sleeper", tmp_path / "p.pid", tmp_path / "p.log", marker=str(tmp_path))
    argv = [sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path)]
    proc.start(argv)
    assert proc.is_running() and proc.exit_code() is None
    proc.stop()
    assert not proc.is_running()
    assert proc.exit_code() is None  # stopped by us: not a failure of the next start's wait
    proc.start([sys.executable, "-c", "raise SystemExit(3)", str(tmp_path)])
    for _ in range(100):
        if proc.exit_code() is not None:
            break
        time.sleep(0.05)
    assert proc.exit_code() == 3  # an exit of its own is still reported
