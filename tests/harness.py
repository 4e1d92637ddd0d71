"""The test harness's policy: a missing real part fails the run, and nothing is skipped unasked.

Loaded for every run (tests/ and e2e/) by the root `conftest.py`. Tests and fixtures that need
a real part say so with a marker (`torch`, `triton`), `require(part)` or `import_part(module)`:

    pytestmark = pytest.mark.triton          # every test here runs the real tritonserver
    botocore_auth = import_part("botocore.auth")

When the part is missing the test fails with what is missing and how to install it. A developer
who wants such tests skipped instead asks for it: `KUBEFORGE_ALLOW_SKIP=1` or `--allow-skip`.
Without that, a run that skipped or deselected any test fails at the end (deselection asked for
with `-k`, `-m`, `--lf` or `--sw` is the developer's own choice and allowed).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

from kubeforge.testing.triton import tritonserver_available

ALLOW_SKIP_ENV = "KUBEFORGE_ALLOW_SKIP"
# Where every run writes its table of test times (default: .times/ in the repository).
TIMES_DIR_ENV = "KUBEFORGE_TIMES_DIR"
ALLOW_SKIP_OPTION = "--allow-skip"
_INSTALL = "run `make install`"


@dataclass(frozen=True)
class Part:
    """A real component some tests need, and how a developer gets it."""

    name: str
    install: str

    def missing_message(self) -> str:
        return f"{self.name} is missing: {self.install}"


TORCH = Part("torch", f"{_INSTALL} (hack/install-torch.sh links the per-machine torch into .venv)")
TRITONSERVER = Part("tritonserver", f"{_INSTALL} (nvidia-pytriton's tritonserver, in the dev extra)")
# the markers that declare a part: pytest.mark.torch, pytest.mark.triton (pyproject's markers)
MARKER_PARTS = {"torch": TORCH, "triton": TRITONSERVER}


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package, or a module set to None
        return False


@functools.cache
def available(part: Part) -> bool:
    if part is TRITONSERVER:
        return tritonserver_available()
    if part is TORCH:
        return _importable("torch")
    raise ValueError(f"no availability check for {part.name}")


_allow_skip_option = False


def skips_allowed() -> bool:
    """Whether the developer asked for missing parts to skip tests (never the default, never in CI)."""
    return _allow_skip_option or os.environ.get(ALLOW_SKIP_ENV, "") not in ("", "0")


def missing(message: str) -> NoReturn:
    """Fail the current test (or collection) with message; skip instead only when asked to."""
    if skips_allowed():
        pytest.skip(f"{message} ({ALLOW_SKIP_ENV} set)", allow_module_level=True)
    pytest.fail(f"{message} (or set {ALLOW_SKIP_ENV}=1 to skip what needs it)", pytrace=False)


def require(part: Part) -> None:
    """Fail (or skip, when asked) unless part is available."""
    if not available(part):
        missing(part.missing_message())


def import_part(module: str, install: str = "run `make install` (the dev extra)") -> ModuleType:
    """The module, imported; a missing one fails the test with how to install it (skips when asked)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing(f"{module} is missing ({error}): {install}")


# -- the pytest plugin ---------------------------------------------------------------------------


def _deselection_asked(config: pytest.Config) -> bool:
    option = config.option
    return any(
        getattr(option, name, None) for name in ("keyword", "markexpr", "lf", "stepwise", "stepwise_skip")
    )


class Policy:
    """Counts what was skipped or deselected, and fails a run that had any unless asked for."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.skipped: list[str] = []
        self.deselected = 0

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        """A test marked with a part's marker fails (or skips, when asked) before its fixtures start."""
        for marker, part in MARKER_PARTS.items():
            if item.get_closest_marker(marker) is not None:
                require(part)

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected += len(items)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def _record(self, report: pytest.CollectReport | pytest.TestReport) -> None:
        if report.skipped and not hasattr(report, "wasxfail"):
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            self.skipped.append(f"{report.nodeid or '.'}: {reason}")

    def problems(self) -> list[str]:
        if skips_allowed():
            return []
        problems = [f"{len(self.skipped)} skipped"] if self.skipped else []
        if self.deselected and not _deselection_asked(self.config):
            problems.append(f"{self.deselected} deselected")
        return problems

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.problems() and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        problems = self.problems()
        if not problems:
            return
        terminalreporter.section("kubeforge: no test may vanish", sep="=", red=True, bold=True)
        for line in self.skipped[:50]:
            terminalreporter.write_line(f"SKIPPED {line}")
        terminalreporter.write_line(
            f"FAILED the run: {', '.join(problems)}. Install what is missing (`make install`), "
            f"or set {ALLOW_SKIP_ENV}=1 (or pass {ALLOW_SKIP_OPTION}) to skip on purpose.",
            red=True,
            bold=True,
        )


class TimesTable:
    """Writes every test's time (setup + call + teardown) to `.times/<suite>.tsv`, slowest first.

    The suite is the folder the tests came from (`tests`, `e2e`, or `mixed`), plus the `-m`
    expression when one was given, so the two e2e runs of `make test` keep a table each. Under
    pytest-xdist only the controller writes (it receives every worker's reports); the worker that ran
    a test is a column.
    """

    def __init__(self, config: pytest.Config, directory: Path) -> None:
        self.config = config
        self.directory = directory
        self.seconds: dict[str, float] = {}
        self.outcomes: dict[str, str] = {}
        self.workers: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] = self.seconds.get(report.nodeid, 0.0) + report.duration
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.nodeid] = report.outcome
        worker = getattr(report, "node", None)  # pytest-xdist's controller: the worker that ran it
        self.workers[report.nodeid] = worker.gateway.id if worker is not None else "-"

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.seconds:
            return
        roots = {nodeid.split("/", 1)[0].split("::", 1)[0] for nodeid in self.seconds}
        suite = roots.pop() if len(roots) == 1 else "mixed"
        marks = self.config.option.markexpr
        if marks:
            suite += "-" + "".join(c if c.isalnum() else "-" for c in marks).strip("-")
        self.directory.mkdir(parents=True, exist_ok=True)
        rows = sorted(self.seconds.items(), key=lambda item: -item[1])
        lines = ["seconds\toutcome\tworker\ttest"]
        lines += [f"{sec:.1f}\t{self.outcomes.get(n, '-')}\t{self.workers[n]}\t{n}" for n, sec in rows]
        (self.directory / f"{suite}.tsv").write_text("\n".join(lines) + "\n")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        ALLOW_SKIP_OPTION,
        action="store_true",
        default=False,
        help=f"let tests whose real parts are missing skip, and allow skipped and deselected tests "
        f"(as {ALLOW_SKIP_ENV}=1 does); without it, any skipped or deselected test fails the run",
    )


def pytest_configure(config: pytest.Config) -> None:
    global _allow_skip_option
    _allow_skip_option = bool(config.getoption(ALLOW_SKIP_OPTION))
    config.pluginmanager.register(Policy(config), "kubeforge-harness-policy")
    if not hasattr(config, "workerinput"):  # a pytest-xdist worker: its controller writes the table
        times = Path(os.environ.get(TIMES_DIR_ENV) or config.rootpath / ".times")
        config.pluginmanager.register(TimesTable(config, times), "kubeforge-times-table")
