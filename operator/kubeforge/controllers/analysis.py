"""Canary analysis: the canary revision against the stable one, on Triton's metrics in Prometheus.

Each revision's pods are named in the queries (Prometheus' Kubernetes discovery labels every series
with `namespace` and `pod`): the canary's are the running pods labelled with its revision
(`kubeforge.io/canary-revision`), the stable's the running pods not labelled canary. Naming
them, not matching a name pattern, keeps out a previous canary's pods whose last samples are still
in the window. Every value is read over the same window for both, and the queries are written into
status as they were sent, so a person can paste them into Prometheus.

- requests: successful plus failed inference requests in the window; fewer than `minRequests` on
  either side makes the analysis inconclusive (the step holds, the next interval asks again);
- errorRatio: failed / all requests; the canary's may exceed the stable's by `maxErrorRatioIncrease`;
- latencyP<q>: the worst pod's request latency quantile (Triton's summary, `summary_latencies`) over
  the window, in microseconds; the canary's may be `maxLatencyRatio` times the stable's;
- timeToFirstTokenMs, when the ModelDeployment serves a streaming model: the mean time to first
  token over the window (the model's own histogram); the canary's may be
  `maxTimeToFirstTokenRatio` times the stable's. No stream on either side is no objection.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

import aiohttp

from kubeforge.api.modeldeployment import AnalysisResult, AnalysisVerdict, CanaryAnalysis, MetricResult
from kubeforge.builders.autoscaling import TTFT_COUNT, TTFT_SUM, any_of

log = logging.getLogger(__name__)
QUERY_TIMEOUT_SECONDS = 5.0

# PromQL -> its value (None: no series), or raises PrometheusError
Query = Callable[[str], Awaitable[float | None]]


class PrometheusError(RuntimeError):
    """Prometheus could not be asked, or refused the query."""


@dataclass(frozen=True)
class Revision:
    """A revision's pods, by name, as a PromQL label selector."""

    namespace: str
    pods: tuple[str, ...]

    def selector(self, extra: str = "") -> str:
        return f'namespace="{self.namespace}",pod=~"{"|".join(self.pods)}"{extra}'


def requests_query(rev: Revision, window: int) -> str:
    return f"sum(increase(nv_inference_request_success{{{rev.selector()}}}[{window}s])) + " + _failures(
        rev, window
    )


def _failures(rev: Revision, window: int) -> str:
    # a server that failed no request may have no failure series yet: that is 0, not "no data"
    return f"(sum(increase(nv_inference_request_failure{{{rev.selector()}}}[{window}s])) or vector(0))"


def error_ratio_query(rev: Revision, window: int) -> str:
    return f"{_failures(rev, window)} / ({requests_query(rev, window)})"


def latency_query(rev: Revision, window: int, quantile: str) -> str:
    # `> -1` drops NaN: a summary with no observation in its own window reports NaN
    selector = rev.selector(f',quantile="{quantile}"')
    return f"max(max_over_time(nv_inference_request_summary_us{{{selector}}}[{window}s]) > -1)"


def ttft_query(rev: Revision, window: int) -> str:
    """Mean time to first token (ms) of a streaming model: its own histogram (the python-llm model's,
    or vLLM's through Triton's vLLM backend), as the autoscaler reads it."""
    sums, counts = any_of(TTFT_SUM), any_of(TTFT_COUNT)
    return (
        f"sum(rate({{{sums},{rev.selector()}}}[{window}s])) / "
        f"sum(rate({{{counts},{rev.selector()}}}[{window}s])) * 1000"
    )


def _number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) or math.isinf(value) else value


def _fmt(value: float | None) -> str:
    return "no data" if value is None else f"{value:.4g}"


async def analyse(
    query: Query,
    spec: CanaryAnalysis,
    namespace: str,
    stable_pods: list[str],
    canary_pods: list[str],
    *,
    step: int,
    revision: str,
    window: int,
    now: datetime,
    streaming: bool = False,
) -> AnalysisResult:
    """Compare the canary with the stable revision over the last `window` seconds."""
    stable, canary = Revision(namespace, tuple(stable_pods)), Revision(namespace, tuple(canary_pods))

    def inconclusive(message: str) -> AnalysisResult:
        return AnalysisResult(
            step=step,
            revision=revision,
            at=now,
            window_seconds=window,
            verdict=AnalysisVerdict.INCONCLUSIVE,
            message=message,
        )

    if not canary_pods or not stable_pods:
        return inconclusive(f"no pod of the {'canary' if not canary_pods else 'stable'} revision is running")
    quantile = spec.latency_quantile
    latency_name = f"latencyP{quantile[2:].ljust(2, '0')}"
    builders: tuple[tuple[str, Callable[[Revision], str]], ...] = (
        ("requests", lambda rev: requests_query(rev, window)),
        ("errorRatio", lambda rev: error_ratio_query(rev, window)),
        (latency_name, lambda rev: latency_query(rev, window, quantile)),
    )
    if streaming:
        builders += (("timeToFirstTokenMs", lambda rev: ttft_query(rev, window)),)
    queries = [(metric, build(canary), build(stable)) for metric, build in builders]
    try:
        values = await asyncio.gather(*(query(q) for _, c, s in queries for q in (c, s)))
    except PrometheusError as err:
        return inconclusive(f"Prometheus could not be read: {err}")
    numbers = [_number(v) for v in values]
    results: list[MetricResult] = []
    for index, (metric, canary_query, stable_query) in enumerate(queries):
        canary_value, stable_value = numbers[2 * index], numbers[2 * index + 1]
        limit, verdict = _judge(metric, spec, canary_value, stable_value)
        results.append(
            MetricResult(
                name=metric,
                canary=canary_value,
                stable=stable_value,
                limit=limit,
                verdict=verdict,
                canary_query=canary_query,
                stable_query=stable_query,
            )
        )
    requests = results[0]
    if requests.verdict != AnalysisVerdict.PASSED:
        # with too few requests a ratio or a quantile says nothing: judge none of them
        results = [
            requests,
            *(m.model_copy(update={"verdict": AnalysisVerdict.INCONCLUSIVE}) for m in results[1:]),
        ]
    failed = [m for m in results if m.verdict == AnalysisVerdict.FAILED]
    unclear = [m for m in results if m.verdict == AnalysisVerdict.INCONCLUSIVE]
    verdict = (
        AnalysisVerdict.FAILED
        if failed
        else AnalysisVerdict.INCONCLUSIVE
        if unclear
        else AnalysisVerdict.PASSED
    )
    shown = failed or unclear or results
    detail = "; ".join(
        f"{m.name} canary {_fmt(m.canary)} vs stable {_fmt(m.stable)} (limit: {m.limit})" for m in shown
    )
    return AnalysisResult(
        step=step,
        revision=revision,
        at=now,
        window_seconds=window,
        verdict=verdict,
        message=f"{verdict.value} over {window}s: {detail}",
        metrics=results,
    )


def _at_most(
    limit: str, canary: float | None, bound: float | None, *, absent_passes: bool = False
) -> tuple[str, AnalysisVerdict]:
    """The canary's value against a bound made of the stable's (None: the stable had no value);
    inconclusive without both, unless `absent_passes` and neither side had one."""
    if canary is None or bound is None:
        absent = absent_passes and canary is None and bound is None
        return limit, AnalysisVerdict.PASSED if absent else AnalysisVerdict.INCONCLUSIVE
    return limit, AnalysisVerdict.PASSED if canary <= bound else AnalysisVerdict.FAILED


def _judge(
    metric: str, spec: CanaryAnalysis, canary: float | None, stable: float | None
) -> tuple[str, AnalysisVerdict]:
    if metric == "requests":
        limit = f">= {spec.min_requests} on each revision"
        enough = canary is not None and stable is not None and min(canary, stable) >= spec.min_requests
        return limit, AnalysisVerdict.PASSED if enough else AnalysisVerdict.INCONCLUSIVE
    if metric == "errorRatio":
        increase = spec.max_error_ratio_increase
        return _at_most(f"<= stable + {increase:g}", canary, None if stable is None else stable + increase)
    ratio = spec.max_time_to_first_token_ratio if metric == "timeToFirstTokenMs" else spec.max_latency_ratio
    bound = None if stable is None else stable * ratio
    # time to first token: no stream answered in the window on either side is nothing to compare
    return _at_most(f"<= {ratio:g} x stable", canary, bound, absent_passes=metric == "timeToFirstTokenMs")


class Prometheus:
    """Instant queries against the operator's Prometheus (settings.prometheus_address)."""

    def __init__(self, address: str) -> None:
        self.address = address.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def query(self, promql: str) -> float | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=QUERY_TIMEOUT_SECONDS))
        try:
            async with self._session.get(
                f"{self.address}/api/v1/query", params={"query": promql}
            ) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            raise PrometheusError(f"{self.address}: {err or type(err).__name__}") from err
        if body.get("status") != "success":
            raise PrometheusError(f"{self.address}: {body.get('errorType')}: {body.get('error')}")
        result = body["data"]["result"]
        if body["data"]["resultType"] == "scalar":
            return float(result[1])
        return float(result[0]["value"][1]) if result else None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
