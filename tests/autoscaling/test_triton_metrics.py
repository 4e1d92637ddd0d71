"""The PromQL behind the autoscaling targets, evaluated on a real Triton's counters, moves with load."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from kubeforge.api import ModelDeployment
from kubeforge.builders.autoscaling import INFERENCE_RATE, PENDING_REQUESTS, QUEUE_TIME, keda_query
from kubeforge.testing.triton import TritonServer, run_tritonserver
from kubeforge.testing.workloads import drive_load, fixed_cost_model, write_model
from tests.autoscaling.promql import Scrapes, evaluate, parse_exposition
from tests.data.invalid_specs import example

pytestmark = pytest.mark.triton  # tests/harness.py fails these where tritonserver is missing
POD = {"namespace": "team-a", "pod": "resnet50-5bb75f8dc6-d9xrc"}


def _scrape(url: str) -> dict[str, dict]:  # type: ignore[type-arg]
    with urllib.request.urlopen(url, timeout=5) as response:
        return parse_exposition(response.read().decode(), POD)


def _window(server: TritonServer, seconds: float, load: int) -> Scrapes:
    """Two scrapes `seconds` apart, with `load` concurrent clients running in between (0: idle)."""
    url = server.metrics_url
    before = _scrape(url)
    start = time.monotonic()
    if load:
        asyncio.run(
            drive_load(server.grpc_url.removeprefix("grpc://"), "fixed", load, seconds, max_per_client=10_000)
        )
    else:
        time.sleep(seconds)
    # Triton refreshes its counters at a fixed interval; read after it has published the window
    time.sleep(0.3)
    return Scrapes(before, _scrape(url), time.monotonic() - start)


def _pending_during_load(server: TritonServer, query: str) -> float:
    """The most pending requests the query reads from scrapes taken while 8 clients send requests."""
    seen: list[float] = []

    def scrape_while_loaded() -> None:
        for _ in range(8):
            time.sleep(0.3)
            now = _scrape(server.metrics_url)
            seen.append(sum(evaluate(query, Scrapes(now, now, 1.0)).values()))

    scraper = threading.Thread(target=scrape_while_loaded)
    scraper.start()
    asyncio.run(drive_load(server.grpc_url.removeprefix("grpc://"), "fixed", 8, 3.0, max_per_client=10_000))
    scraper.join()
    return max(seen)


def test_queue_time_and_rate_queries_follow_the_load(tmp_path: Path) -> None:
    # no dynamic batching and a 4 ms execution: concurrent requests must queue
    write_model(tmp_path, fixed_cost_model("fixed", max_batch_size=8, batching=False, step_ms=4))
    doc = example("model-deployment.yaml")
    doc["metadata"].update(namespace="team-a", uid="u")
    md = ModelDeployment.model_validate(doc)
    queue_q, rate_q = keda_query(md, QUEUE_TIME), keda_query(md, INFERENCE_RATE)
    with run_tritonserver(
        ["--model-control-mode=none", "--strict-readiness=true", "--metrics-interval-ms=200"],
        repository=tmp_path,
        wait="ready",
    ) as server:
        # the metrics endpoint starts serving a moment after the HTTP endpoint reports ready
        deadline = time.monotonic() + 30
        while server.http_get("/metrics", port=server.metrics_port) != 200:
            assert time.monotonic() < deadline, f"metrics endpoint never answered:\n{server.log()}"
            time.sleep(0.2)
        idle = _window(server, 1.5, load=0)
        busy = _window(server, 3.0, load=8)
        pending_busy = _pending_during_load(server, keda_query(md, PENDING_REQUESTS))
    assert pending_busy >= 2, pending_busy  # 8 clients, one instance, no batching: requests wait
    idle_rate, busy_rate = sum(evaluate(rate_q, idle).values()), sum(evaluate(rate_q, busy).values())
    idle_queue, busy_queue = sum(evaluate(queue_q, idle).values()), sum(evaluate(queue_q, busy).values())
    assert idle_rate == 0 and idle_queue == 0
    # 8 clients on one 4 ms-per-request instance: ~250 requests/s, each waiting ~7 executions
    assert busy_rate > 50, busy_rate
    assert busy_queue > 5_000, busy_queue  # microseconds
    print(
        f"idle: {idle_rate:.0f}/s, {idle_queue:.0f} us; busy: {busy_rate:.0f}/s, {busy_queue:.0f} us queued"
    )
