"""The operator's own Prometheus metrics: reconciles, errors, latency, API calls."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class OperatorMetrics:
    reconciles: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latency_sum: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    latency_buckets: dict[str, list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0] * len(BUCKETS))
    )
    api_calls: Counter[str] | None = None

    def observe(self, kind: str, seconds: float, ok: bool) -> None:
        self.reconciles[kind] += 1
        if not ok:
            self.errors[kind] += 1
        self.latency_sum[kind] += seconds
        buckets = self.latency_buckets[kind]
        for i, bound in enumerate(BUCKETS):
            if seconds <= bound:
                buckets[i] += 1

    def render(self) -> str:
        """Prometheus text exposition format."""
        lines = [
            "# HELP kubeforge_reconcile_total Reconciles by kind.",
            "# TYPE kubeforge_reconcile_total counter",
            *(f'kubeforge_reconcile_total{{kind="{k}"}} {v}' for k, v in sorted(self.reconciles.items())),
            "# HELP kubeforge_reconcile_errors_total Failed reconciles by kind.",
            "# TYPE kubeforge_reconcile_errors_total counter",
            *(f'kubeforge_reconcile_errors_total{{kind="{k}"}} {v}' for k, v in sorted(self.errors.items())),
            "# HELP kubeforge_reconcile_duration_seconds Reconcile latency by kind.",
            "# TYPE kubeforge_reconcile_duration_seconds histogram",
        ]
        for kind, buckets in sorted(self.latency_buckets.items()):
            for bound, count in zip(BUCKETS, buckets, strict=True):
                lines.append(
                    f'kubeforge_reconcile_duration_seconds_bucket{{kind="{kind}",le="{bound}"}} {count}'
                )
            lines.append(
                f'kubeforge_reconcile_duration_seconds_bucket{{kind="{kind}",le="+Inf"}} {self.reconciles[kind]}'
            )
            lines.append(
                f'kubeforge_reconcile_duration_seconds_sum{{kind="{kind}"}} {self.latency_sum[kind]:.6f}'
            )
            lines.append(
                f'kubeforge_reconcile_duration_seconds_count{{kind="{kind}"}} {self.reconciles[kind]}'
            )
        if self.api_calls is not None:
            lines += [
                "# HELP kubeforge_api_calls_total API calls by verb.",
                "# TYPE kubeforge_api_calls_total counter",
            ]
            lines += [
                f'kubeforge_api_calls_total{{verb="{k}"}} {v}' for k, v in sorted(self.api_calls.items())
            ]
        return "\n".join(lines) + "\n"


async def serve_metrics(metrics: OperatorMetrics, host: str, port: int) -> asyncio.Server:
    """A tiny HTTP server for /metrics (no extra dependency)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), timeout=5)
            while (await asyncio.wait_for(reader.readline(), timeout=5)) not in (b"\r\n", b"\n", b""):
                pass
            ok = request.split(b" ")[1:2] == [b"/metrics"]
            body = metrics.render().encode() if ok else b"not found\n"
            status = b"200 OK" if ok else b"404 Not Found"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError, IndexError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


class Timer:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
