"""The harness itself (tests/harness.py): a missing torch or tritonserver fails the run, loudly.

Each case runs pytest in a subprocess. A part is made unavailable there for real: its module is set
to None in sys.modules before pytest starts, so `import torch` raises and find_spec finds nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ALLOW_SKIP_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
# python -c RUN <hidden,modules> <pytest args...>: pytest.main with those modules unimportable
RUN = (
    "import sys; sys.modules.update(dict.fromkeys(m for m in sys.argv[1].split(',') if m)); "
    "import pytest; sys.exit(pytest.main(sys.argv[2:]))"
)


def _pytest(
    *args: str, hide: str = "", cwd: Path = REPO_ROOT, allow_skip: bool = False
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != ALLOW_SKIP_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if allow_skip:
        env[ALLOW_SKIP_ENV] = "1"
    argv = [sys.executable, "-c", RUN, hide, "-p", "no:cacheprovider", "-q", "-rs", *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def test_missing_torch_fails_the_trainer_suite() -> None:
    result = _pytest("tests/trainer/test_launch.py", "tests/trainer/test_reference_models.py", hide="torch")
    out = _output(result)
    assert result.returncode != 0, out
    assert "torch is missing: run `make install` (hack/install-torch.sh" in out
    assert "2 errors" in out, out  # one per module: nothing vanished


def test_missing_torch_skips_only_when_asked() -> None:
    result = _pytest("tests/trainer/test_launch.py", hide="torch", allow_skip=True)
    out = _output(result)
    # every test there skipped: pytest's "no tests ran" (5), not a failure
    assert result.returncode == pytest.ExitCode.NO_TESTS_COLLECTED, out
    assert "torch is missing" in out and "1 skipped" in out, out


def test_missing_tritonserver_fails_the_triton_tests() -> None:
    result = _pytest(
        "tests/autoscaling/test_triton_metrics.py", "tests/triton/test_serving.py", hide="pytriton"
    )
    out = _output(result)
    assert result.returncode == pytest.ExitCode.TESTS_FAILED, out
    assert "tritonserver is missing: run `make install` (nvidia-pytriton" in out
    assert "passed" not in out and "skipped" not in out, out


TINY = """
import pytest

def test_runs():
    pass

def test_skips():
    pytest.skip("not today")
"""
DESELECTING_CONFTEST = """
def pytest_collection_modifyitems(config, items):
    dropped = [item for item in items if item.name == "test_dropped"]
    items[:] = [item for item in items if item not in dropped]
    config.hook.pytest_deselected(items=dropped)
"""
SUB = """
def test_kept():
    pass

def test_dropped():
    pass
"""


def _write_suite(root: Path) -> None:
    """test_tiny.py: one test passes, one skips; sub/: a conftest deselects one of two tests."""
    (root / "test_tiny.py").write_text(TINY)
    (root / "sub").mkdir()
    (root / "sub" / "conftest.py").write_text(DESELECTING_CONFTEST)
    (root / "sub" / "test_sub.py").write_text(SUB)


@pytest.mark.parametrize(
    ("args", "allow_skip", "returncode", "expected"),
    [
        (["test_tiny.py"], False, 1, "FAILED the run: 1 skipped"),
        (["test_tiny.py"], True, 0, "1 passed, 1 skipped"),
        (["test_tiny.py", "--allow-skip"], False, 0, "1 passed, 1 skipped"),
        (["sub"], False, 1, "FAILED the run: 1 deselected"),
        (["sub"], True, 0, "1 passed, 1 deselected"),
        (["test_tiny.py", "-k", "runs"], False, 0, "1 passed, 1 deselected"),  # -k: asked for
        (["test_tiny.py", "sub", "-k", "not dropped"], False, 1, "FAILED the run: 1 skipped"),
    ],
)
def test_skipped_or_deselected_fails_the_run(
    tmp_path: Path, args: list[str], allow_skip: bool, returncode: int, expected: str
) -> None:
    _write_suite(tmp_path)
    result = _pytest("-p", "tests.harness", *args, cwd=tmp_path, allow_skip=allow_skip)
    out = _output(result)
    assert result.returncode == returncode, out
    assert expected in out, out


SLOW_AND_FAST = """
import time

import pytest


@pytest.mark.serial
def test_slow():
    time.sleep(0.3)


def test_fast():
    pass
"""


@pytest.mark.parametrize(
    ("args", "table"),
    [([], "e2e.tsv"), (["-m", "not serial"], "e2e-not-serial.tsv"), (["-n", "2"], "e2e.tsv")],
)
def test_every_run_writes_its_test_times_slowest_first(tmp_path: Path, args: list[str], table: str) -> None:
    (tmp_path / "e2e").mkdir()
    (tmp_path / "e2e" / "test_times.py").write_text(SLOW_AND_FAST)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    serial: alone\n")
    result = _pytest("-p", "tests.harness", "e2e", *args, cwd=tmp_path)
    assert result.returncode == 0, _output(result)
    lines = (tmp_path / ".times" / table).read_text().splitlines()
    assert lines[0] == "seconds\toutcome\tworker\ttest"
    rows = [line.split("\t") for line in lines[1:]]
    names = [row[3] for row in rows]
    if "-m" in args:
        assert names == ["e2e/test_times.py::test_fast"]
        return
    assert names == ["e2e/test_times.py::test_slow", "e2e/test_times.py::test_fast"]
    assert float(rows[0][0]) >= 0.3
    assert {row[1] for row in rows} == {"passed"}
    assert {row[2] for row in rows} <= ({"gw0", "gw1"} if "-n" in args else {"-"})
