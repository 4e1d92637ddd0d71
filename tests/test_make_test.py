"""hack/test.sh (`make test`): its phases, the background ones joined before they are needed, and the
budgets that fail a slow run under CI. Run on a copy of the script in a scratch tree whose make, Go
builds and tool installs are stand-ins that only sleep, print and exit."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

STAND_IN = """#!/usr/bin/env bash
echo "$0 $*" >>"$(dirname "$0")/{root}/calls.log"
sleep {seconds}
exit {status}
"""


def _tree(
    tmp_path: Path, budgets: str, go_seconds: int = 2, go_status: int = 0, unit_status: int = 0
) -> Path:
    root = tmp_path / "repo"
    (root / "hack").mkdir(parents=True)
    (root / ".ci").mkdir()
    shutil.copy(REPO_ROOT / "hack" / "test.sh", root / "hack" / "test.sh")
    (root / ".ci" / "budgets.tsv").write_text(budgets)
    stand_ins = {
        "e2e/binaries.sh": (go_seconds, go_status, ".."),
        "tests/chart/checkov.sh": (0, 0, "../.."),
        "tests/llm/vllm-env.sh": (1, 0, "../.."),
        "hack/images.sh": (1, 0, ".."),
    }
    for path, (seconds, status, up) in stand_ins.items():
        script = root / path
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(STAND_IN.format(root=up, seconds=seconds, status=status))
        script.chmod(0o755)
    make = root / "fake-make"
    make.write_text(
        "#!/usr/bin/env bash\n"
        'echo "make $*" >>"$(dirname "$0")/calls.log"\n'
        f'case "$*" in *test-unit*) exit {unit_status} ;; esac\n'
    )
    make.chmod(0o755)
    return root


def _run(root: Path, ci: bool = False) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["MAKE"] = str(root / "fake-make")
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        ["bash", str(root / "hack" / "test.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _phases(root: Path) -> dict[str, int]:
    rows = (line.split("\t") for line in (root / ".times" / "phases.tsv").read_text().splitlines())
    return {row[0]: int(row[1]) for row in rows}


GENEROUS = (
    "venv 60\ngo-builds 60\ntools 60\ntools-wait 60\nimages 60\nimages-wait 60\nlint 60\nunit 60\n"
    "go-builds-wait 60\ne2e 60\ne2e-netns 60\n"
)


def test_every_phase_is_timed_and_e2e_starts_only_after_the_go_builds(tmp_path: Path) -> None:
    root = _tree(tmp_path, GENEROUS, go_seconds=3)
    result = _run(root)
    assert result.returncode == 0, result.stdout + result.stderr
    phases = _phases(root)
    assert list(phases) == [
        "venv", "lint", "tools", "tools-wait", "unit", "go-builds", "go-builds-wait", "images", "images-wait",
        "e2e", "e2e-netns",
    ]  # fmt: skip
    assert phases["go-builds"] >= 3
    calls = (root / "calls.log").read_text().splitlines()
    # the e2e target is called once the Go builds and the images have finished: their lines come first
    for background in ("binaries.sh", "images.sh build"):
        assert calls.index("make --no-print-directory test-e2e") > next(
            i for i, call in enumerate(calls) if background in call
        )
    # the images are built after the venv (the trainer's base takes the machine's torch from it)
    assert calls.index("make --no-print-directory install torch") < next(
        i for i, call in enumerate(calls) if "images.sh" in call
    )
    assert "== make test: phases" in result.stdout


def test_a_failed_go_build_fails_the_run_before_e2e(tmp_path: Path) -> None:
    root = _tree(tmp_path, GENEROUS, go_status=3)
    result = _run(root)
    assert result.returncode == 3
    assert "[phase] go-builds FAILED (exit status 3)" in result.stdout
    assert "test-e2e" not in (root / "calls.log").read_text()


def test_a_failed_phase_stops_the_run_with_its_status(tmp_path: Path) -> None:
    root = _tree(tmp_path, GENEROUS, unit_status=2)
    result = _run(root)
    assert result.returncode == 2
    assert "[phase] unit FAILED (exit status 2)" in result.stdout


@pytest.mark.parametrize(("ci", "returncode"), [(True, 1), (False, 0)])
def test_a_phase_over_one_and_a_half_times_its_budget_fails_only_under_ci(
    tmp_path: Path, ci: bool, returncode: int
) -> None:
    root = _tree(tmp_path, GENEROUS.replace("go-builds 60", "go-builds 1"), go_seconds=2)
    result = _run(root, ci=ci)
    assert result.returncode == returncode, result.stdout
    # the stand-in sleeps 2 s; the phase's whole seconds are 2, or 3 on a loaded machine (seen)
    took = re.search(r"BUDGET EXCEEDED: go-builds took 0m(\d\d)s, budget 0m01s", result.stdout)
    assert took is not None and int(took.group(1)) >= 2, result.stdout
