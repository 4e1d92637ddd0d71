"""The kubeforge operator as a background process against a local cluster (dev and e2e).

It runs exactly as a user runs it, `python -m kubeforge run`, with KUBECONFIG
pointing at the cluster, and counts as started once kopf's liveness endpoint
answers 200 (kopf serves it after the startup handlers have run).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

from e2e.cluster import REPO_ROOT
from e2e.net import free_ports, http_status
from e2e.procs import ManagedProcess

RUNNER_MODULE = "kubeforge.controllers.runner"


class OperatorError(RuntimeError):
    """The operator exited or never became live; the message ends with its log."""


def operator_available() -> bool:
    """Whether this environment has the operator's entry point (`kubeforge run` imports it)."""
    try:
        return importlib.util.find_spec(RUNNER_MODULE) is not None
    except ModuleNotFoundError:  # a parent package (kubeforge.controllers) is missing
        return False


class OperatorProcess:
    """`python -m kubeforge run` against `kubeconfig`, logging to `log_file`."""

    def __init__(
        self, kubeconfig: Path, log_file: Path, pid_file: Path, python: str = sys.executable
    ) -> None:
        self.kubeconfig = kubeconfig
        self.python = python
        # Recognised by its command line (see procs.ManagedProcess.marker).
        self.process = ManagedProcess("operator", pid_file, log_file, marker="-m kubeforge run")
        self.liveness_port = 0
        self.metrics_port = 0

    @property
    def log_file(self) -> Path:
        return self.process.log_file

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.liveness_port}/healthz"

    def is_running(self) -> bool:
        return self.process.is_running()

    def start(
        self,
        timeout: float = 60.0,
        metrics: bool = False,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        """Start the operator and wait until its liveness endpoint answers 200.

        With `metrics=True` it serves Prometheus metrics on a free port (read them
        with `metrics()`, `reconciles()`, `api_calls()`); otherwise `--metrics-port 0`.
        `env` adds to its environment (e.g. KUBEFORGE_CRASH_AT for the crash-safety tests).
        """
        self.liveness_port, metrics_port = free_ports(2)
        self.metrics_port = metrics_port if metrics else 0
        argv = [
            self.python,
            "-m",
            "kubeforge",
            "run",
            "--liveness",
            self.liveness_url,
            "--metrics-port",
            str(self.metrics_port),
            "--metrics-host",
            "127.0.0.1",
            *extra_args,
        ]
        # Unbuffered, so that the log shown after a failed test is complete up to that moment.
        # Pod IPs of simulated pods are not on this machine: the operator must not dial them.
        # A deployment degraded for 5 s counts as Stalled (300 s in production), so tests see it.
        environ = dict(
            os.environ,
            KUBECONFIG=str(self.kubeconfig),
            PYTHONUNBUFFERED="1",
            KUBEFORGE_MODEL_PROBE="false",
            KUBEFORGE_STALL_SECONDS="5",
            **(env or {}),
        )
        self.process.start(argv, env=environ, cwd=REPO_ROOT)
        deadline = time.monotonic() + timeout
        while http_status(self.liveness_url) != 200:
            code = self.process.exit_code()
            if code is not None or time.monotonic() > deadline:
                what = f"exited with status {code}" if code is not None else f"not live after {timeout:.0f}s"
                self.stop()
                raise OperatorError(
                    f"the operator {what}; end of {self.log_file}:\n{self.process.log_tail()}"
                )
            time.sleep(0.2)

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """The operator's current Prometheus samples as (name, labels, value)."""
        if not self.metrics_port:
            raise OperatorError("the operator was started without metrics (start(metrics=True))")
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return parse_prometheus(response.read().decode())

    def reconciles(self, kind: str | None = None) -> int:
        """Reconciles so far (`kubeforge_reconcile_total`), of one kind or of all."""
        return int(
            sum(
                value
                for name, labels, value in self.metrics()
                if name == "kubeforge_reconcile_total" and kind in (None, labels.get("kind"))
            )
        )

    def api_calls(self) -> Counter[str]:
        """API calls so far by verb (`kubeforge_api_calls_total`)."""
        calls: Counter[str] = Counter()
        for name, labels, value in self.metrics():
            if name == "kubeforge_api_calls_total":
                calls[labels.get("verb", "")] += int(value)
        return calls

    def log_text(self, offset: int = 0) -> str:
        """The log from byte `offset` on (see `log_size()`)."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (kopf shuts down gracefully), SIGKILL after `timeout`."""
        self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs (with leader election, the Lease is not released)."""
        self.process.kill()


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")
_LABEL = re.compile(r'(?P<key>[a-zA-Z_][a-zA-Z0-9_]*)="(?P<value>(?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Samples of the Prometheus text exposition format (comments and blank lines skipped)."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and not line.startswith("#"):
            labels = {m["key"]: m["value"] for m in _LABEL.finditer(match["labels"] or "")}
            samples.append((match["name"], labels, float(match["value"])))
    return samples
