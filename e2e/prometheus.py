"""Prometheus, built from its Go module, on loopback: scraping what the test names, answering PromQL.

    with Prometheus(state_dir) as prometheus:
        prometheus.set_targets([(triton.metrics_address, {"namespace": ns, "pod": "triton-0"})])
        prometheus.wait_for_query(f'sum(nv_inference_count{{namespace="{ns}"}})')

kwok pods run no containers, so nothing in the cluster can be scraped; the test runs the real
servers (tritonserver) on loopback and tells Prometheus, through a file_sd file, which pod each
one stands for: the `namespace` and `pod` labels that Kubernetes service discovery and the usual
relabelling would have put on its series. Everything downstream of the scrape (the adapter's
rules, KEDA's queries, the HPA) sees what it would see in a cluster.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster import tool_binary
from e2e.kube import wait_for
from e2e.net import free_ports, http_status
from e2e.procs import BackgroundService
from kubeforge.testing.triton import LOOPBACK


class PrometheusQueryError(RuntimeError):
    """Prometheus refused a query (the message has its reason) or gave a result of the wrong shape."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant query's result."""

    labels: dict[str, str]
    value: float


class Prometheus(BackgroundService):
    """Prometheus scraping the targets of a file_sd file that the test rewrites (`set_targets`).

    Scrapes (and evaluates) every `scrape_interval` seconds, so a counter's rate is there a couple
    of seconds after its first scrape. Only the file and HTTP service discoveries are built in
    (e2e/binaries.sh), and no web UI: `url` serves the HTTP API.
    """

    JOB = "kubeforge-e2e"

    def __init__(self, state_dir: Path, *, scrape_interval: float = 1.0) -> None:
        super().__init__(state_dir, ["prometheus"])
        self.scrape_interval = scrape_interval
        self.port = 0

    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>`: the HTTP API (and KEDA's prometheus trigger `serverAddress`)."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def targets_file(self) -> Path:
        """The file_sd file. In a folder of its own: Prometheus re-reads it on every change in its folder."""
        return self.state_dir / "file_sd" / "targets.json"

    def set_targets(self, targets: Iterable[tuple[str, Mapping[str, str]]]) -> None:
        """Scrape exactly these `(host:port, labels)` from now on (before or after start).

        The labels land on every series of that target, as Kubernetes service discovery's
        relabelling would put `namespace` and `pod` there; `__metrics_path__` changes the path
        (default /metrics). Written atomically: Prometheus watches the file and must never read
        half of it.
        """
        groups = [{"targets": [address], "labels": dict(labels)} for address, labels in targets]
        self.targets_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.targets_file.with_suffix(".tmp")
        partial.write_text(json.dumps(groups, indent=2) + "\n")
        partial.replace(self.targets_file)

    def query_vector(self, promql: str) -> list[Sample]:
        """Evaluate an instant query now; every series with its labels (a scalar comes as one, unlabelled)."""
        query = urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:  # 400/422: the query is wrong; the body says why
            raise PrometheusQueryError(
                f"query {promql!r}: {error.read().decode(errors='replace')}"
            ) from error
        data = body["data"]
        if data["resultType"] == "scalar":
            return [Sample({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise PrometheusQueryError(f"query {promql!r} gave a {data['resultType']}, not an instant vector")
        return [Sample(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]

    def query(self, promql: str) -> float | None:
        """The value of a query that gives at most one series; None when it gives none (not yet scraped).

        More than one series is an error: aggregate in the query (`sum(...)`), as the adapter rules do.
        """
        samples = self.query_vector(promql)
        if len(samples) > 1:
            raise PrometheusQueryError(
                f"query {promql!r} gave {len(samples)} series: {[s.labels for s in samples]}"
            )
        return samples[0].value if samples else None

    def wait_for_query(
        self, promql: str, predicate: Callable[[float], bool] = lambda _: True, timeout: float = 30.0
    ) -> float:
        """Wait until the query has a value that satisfies `predicate`; return it.

        The timeout message lists the scrape targets with their health and last error, which is
        usually the explanation.
        """
        last: list[float | None] = [None]

        def check() -> bool:
            last[0] = self.query(promql)
            return last[0] is not None and predicate(last[0])

        wait_for(
            check,
            timeout=timeout,
            interval=0.5,
            message=lambda: f"{promql} (last: {last[0]}; targets: {self.targets()})",
        )
        assert last[0] is not None
        return last[0]

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets: labels, health, last error."""
        with urllib.request.urlopen(f"{self.url}/api/v1/targets?state=active", timeout=10) as response:
            active = json.load(response)["data"]["activeTargets"]
        return [{k: t.get(k) for k in ("scrapeUrl", "labels", "health", "lastError")} for t in active]

    def _launch(self, deadline: float) -> None:
        (self.port,) = free_ports(1)
        interval = f"{round(self.scrape_interval * 1000)}ms"
        config = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": [
                {
                    "job_name": self.JOB,
                    "file_sd_configs": [{"files": [str(self.targets_file)], "refresh_interval": "5s"}],
                }
            ],
        }
        config_file = self.state_dir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        if not self.targets_file.exists():
            self.set_targets([])
        argv: list[str | Path] = [
            tool_binary("prometheus"),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={self.state_dir / 'data'}",
            "--storage.tsdb.retention.time=2h",
            f"--web.listen-address={LOOPBACK}:{self.port}",
        ]
        self._run("prometheus", argv, lambda: http_status(f"{self.url}/-/ready") == 200, deadline)
