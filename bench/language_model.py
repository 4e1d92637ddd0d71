"""`python -m bench.language_model`: the streaming language model served by the real Triton on CPU.

The reference trainer trains the byte-level model (2 ranks under torchrun, gloo) and exports it as
`python-llm`; nvidia-pytriton's tritonserver serves that export as it is. An asyncio client (aiohttp)
streams from `generate_stream` (server-sent events) with 1, 4 and 16 concurrent request loops and
times every token as it arrives:

- time to first token (TTFT) p50/p99: from sending the request to the first event;
- tokens/s: all tokens received at that concurrency over the wall time (the server's throughput),
  and per stream (tokens after the first over the time after the first: the reading speed a user sees);
- streaming vs not: the same requests (same seeds, one at a time) to `generate_stream` and to the
  non-streaming `generate` (`"stream": false`), interleaved; the ratio is the time to the full
  response over the time to first token, both medians of the same run;
- the OpenAI API: each concurrency point again through `kubeforge openai-front` (`/v1/completions`,
  `stream: true`, the same prompts and seeds), right after the direct point: its TTFT and tokens/s
  over the direct ones is what the front adds.

The client runs on the same cores as the server (2 here), so at 16 streams part of what is measured
is the client's own parsing; the forward passes the model reports (`kubeforge_forward_passes_total`)
say how many streams each pass advanced.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.harness import machine, percentile, write_results
from kubeforge.testing.openai_front import running_front
from kubeforge.testing.streaming import model_metrics
from kubeforge.testing.triton import free_port, run_tritonserver
from kubeforge.trainer.text_data import DEFAULT_CORPUS

MODEL = "opticks"
CONCURRENCY = (1, 4, 16)
MAX_TOKENS = 128
TRAINING_ARGS = (
    "--model", "kubeforge.trainer.language_model:ByteTransformer",
    "--optimizer", "adamw", "--lr", "0.003", "--batch-size", "16", "--seed", "7",
    "--eval-every", "100", "--log-every", "50",
)  # fmt: skip


@dataclass
class Sample:
    """One streamed request as the client saw it."""

    started: float
    arrivals: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.arrivals[0] - self.started

    @property
    def stream_tokens_per_second(self) -> float:
        span = self.arrivals[-1] - self.arrivals[0]
        return (len(self.arrivals) - 1) / span if span > 0 else float("nan")


def train_and_export(root: Path, steps: int) -> Path:
    """Train with the reference trainer (2 ranks) and export `python-llm`; returns the repository."""
    repository = root / "repository"
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "kubeforge.trainer", *TRAINING_ARGS, "--steps", str(steps),
        "--output-uri", str(repository), "--model-name", MODEL, "--export-format", "python-llm",
    ]  # fmt: skip
    log = root / "train.log"
    with log.open("wb") as out:
        code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    if code != 0:
        raise RuntimeError(f"training failed ({code}):\n{log.read_text()[-3000:]}")
    return repository


def prompts(count: int) -> list[str]:
    """Prompts of 16 to 64 bytes cut from the corpus (whole lines of prose)."""
    lines = [line for line in DEFAULT_CORPUS.read_text().splitlines() if 16 <= len(line.encode()) <= 64]
    return [lines[(index * 97) % len(lines)] for index in range(count)]


async def stream_once(
    session: aiohttp.ClientSession, url: str, prompt: str, seed: int, max_tokens: int = MAX_TOKENS
) -> Sample:
    """One request to generate_stream; every SSE event's arrival time."""
    sample = Sample(started=time.monotonic())
    body = {"text_input": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed}
    async with session.post(f"{url}/v2/models/{MODEL}/generate_stream", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                if "error" in event:
                    raise RuntimeError(event["error"])
                sample.arrivals.append(time.monotonic())
    if len(sample.arrivals) != max_tokens:
        raise RuntimeError(f"expected {max_tokens} events, got {len(sample.arrivals)}")
    return sample


async def openai_once(
    session: aiohttp.ClientSession, url: str, prompt: str, seed: int, max_tokens: int = MAX_TOKENS
) -> Sample:
    """One streamed /v1/completions request through the OpenAI front; the arrival of every chunk."""
    sample = Sample(started=time.monotonic())
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    tokens = 0
    async with session.post(f"{url}/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(event["error"])
            if event["choices"]:
                sample.arrivals.append(time.monotonic())
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    if tokens != max_tokens:
        raise RuntimeError(f"expected {max_tokens} tokens, the usage says {tokens}")
    return sample


async def whole_once(session: aiohttp.ClientSession, url: str, prompt: str, seed: int) -> float:
    """One request to the non-streaming generate endpoint; seconds to the full response."""
    started = time.monotonic()
    body = {"text_input": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.8, "seed": seed, "stream": False}
    async with session.post(f"{url}/v2/models/{MODEL}/generate", json=body) as response:
        response.raise_for_status()
        await response.read()
    return time.monotonic() - started


async def load_point(
    url: str, metrics_url: str, clients: int, requests_per_client: int, via_openai: bool = False
) -> dict[str, Any]:
    """`clients` loops, each streaming `requests_per_client` requests back to back (to Triton's
    generate_stream at `url`, or with `via_openai` to the OpenAI front at `url`)."""
    once = openai_once if via_openai else stream_once
    texts = prompts(clients * requests_per_client)
    samples: list[Sample] = []
    before = model_metrics(metrics_url, MODEL)
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def loop(client: int) -> None:
            for index in range(requests_per_client):
                seed = client * requests_per_client + index
                samples.append(await once(session, url, texts[seed], seed))

        started = time.monotonic()
        await asyncio.gather(*(loop(c) for c in range(clients)))
        wall = time.monotonic() - started
    after = model_metrics(metrics_url, MODEL)
    tokens = after["kubeforge_generated_tokens_total"] - before["kubeforge_generated_tokens_total"]
    passes = after["kubeforge_forward_passes_total"] - before["kubeforge_forward_passes_total"]
    ttfts = [s.ttft for s in samples]
    return {
        "requests": len(samples),
        "tokens": tokens,
        "wall_s": wall,
        "ttft_p50_ms": percentile(ttfts, 50) * 1000,
        "ttft_p99_ms": percentile(ttfts, 99) * 1000,
        "tokens_per_s": tokens / wall,
        "stream_tokens_per_s_p50": statistics.median(s.stream_tokens_per_second for s in samples),
        "tokens_per_forward_pass": tokens / passes if passes else float("nan"),
    }


async def streaming_vs_whole(url: str, pairs: int) -> dict[str, Any]:
    """TTFT of streamed requests vs the full-response time of the same requests unstreamed, interleaved."""
    texts = prompts(pairs)
    ttfts, wholes = [], []
    async with aiohttp.ClientSession() as session:
        for index, prompt in enumerate(texts):
            ttfts.append((await stream_once(session, url, prompt, index)).ttft)
            wholes.append(await whole_once(session, url, prompt, index))
    ttft, whole = statistics.median(ttfts), statistics.median(wholes)
    return {
        "pairs": pairs,
        "max_tokens": MAX_TOKENS,
        "streaming_ttft_p50_ms": ttft * 1000,
        "non_streaming_full_response_p50_ms": whole * 1000,
        "ratio": whole / ttft,
    }


@contextmanager
def openai_front(triton_url: str, repository: Path) -> Iterator[str]:
    """`kubeforge openai-front` over the server, on a free loopback port; yields its URL."""
    with (
        tempfile.TemporaryDirectory() as scratch,
        running_front(
            ["--triton", triton_url, "--repository", str(repository), "--model", MODEL],
            Path(scratch) / "front.log",
        ) as front,
    ):
        yield front.url


async def measure(repository: Path, smoke: bool) -> dict[str, Any]:
    requests = 3 if smoke else 20
    with (
        run_tritonserver(repository=repository, wait="ready", startup_timeout=180) as server,
        openai_front(server.http_url, repository) as front,
    ):
        # warm-up: TorchScript's profiling executor optimises on the first calls of each shape
        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(stream_once(session, server.http_url, "Light", s, 32) for s in range(8)))
            await asyncio.gather(*(openai_once(session, front, "Light", s, 32) for s in range(8)))
        points, through_openai = {}, {}
        for clients in CONCURRENCY:
            print(f"concurrency {clients} ...", flush=True)
            points[str(clients)] = await load_point(server.http_url, server.metrics_url, clients, requests)
            print(json.dumps(points[str(clients)]), flush=True)
            print(f"concurrency {clients}, through the OpenAI front ...", flush=True)
            through_openai[str(clients)] = await load_point(
                front, server.metrics_url, clients, requests, True
            )
            print(json.dumps(through_openai[str(clients)]), flush=True)
        print("streaming vs non-streaming ...", flush=True)
        comparison = await streaming_vs_whole(server.http_url, 5 if smoke else 30)
        print(json.dumps(comparison), flush=True)
    return {
        "concurrency": list(CONCURRENCY),
        "requests_per_client": requests,
        "points": points,
        "openai": through_openai,
        "streaming": comparison,
    }


def table(results: dict[str, Any]) -> str:
    rows = []
    for clients in results["concurrency"]:
        p = results["points"][str(clients)]
        rows.append(
            (
                f"{clients} concurrent stream{'s' if clients > 1 else ''} ({p['requests']} requests x {MAX_TOKENS} tokens)",
                f"TTFT p50 {p['ttft_p50_ms']:.1f} ms, p99 {p['ttft_p99_ms']:.1f} ms; "
                f"{p['tokens_per_s']:.0f} tokens/s in all, {p['stream_tokens_per_s_p50']:.0f} per stream (p50); "
                f"{p['tokens_per_forward_pass']:.1f} tokens per forward pass",
            )
        )
    for clients in results["concurrency"]:
        direct, front = results["points"][str(clients)], results["openai"][str(clients)]
        rows.append(
            (
                f"{clients} concurrent stream{'s' if clients > 1 else ''} through the OpenAI front "
                f"(`/v1/completions`, same requests)",
                f"TTFT p50 {front['ttft_p50_ms']:.1f} ms ({front['ttft_p50_ms'] / direct['ttft_p50_ms']:.2f}x direct); "
                f"{front['tokens_per_s']:.0f} tokens/s in all ({direct['tokens_per_s'] / front['tokens_per_s']:.2f}x "
                f"the direct time per token)",
            )
        )
    s = results["streaming"]
    rows.append(
        (
            f"streaming TTFT vs the full response unstreamed ({s['pairs']} pairs, 1 at a time)",
            f"{s['streaming_ttft_p50_ms']:.1f} ms vs {s['non_streaming_full_response_p50_ms']:.1f} ms: "
            f"the first token {s['ratio']:.1f}x sooner",
        )
    )
    m = results["machine"]
    head = (
        f"# Language model serving, {results['date']}\n\n"
        f"Machine: {m['cores']} cores, {m['memory_gib']} GiB, {m['platform']}; tritonserver 2.51 (nvidia-pytriton) "
        f"on CPU; the model trained {results['training_steps']} steps (validation loss {results['validation_loss']:.3f}). "
        f"Client and server share the cores; 1-minute load average {results['load_average_at_start']:.1f} at the "
        f"start, {results['load_average_at_end']:.1f} at the end.\n\n"
    )
    return head + "| measure | result |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.language_model", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; nothing is written")
    parser.add_argument("--steps", type=int, default=300, help="training steps before serving (default 300)")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine()}
    # other work on the machine moves these figures: the 1-minute load average says how much there was
    results["load_average_at_start"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="kubeforge-bench-lm-") as tmp:
        steps = 20 if args.smoke else args.steps
        print(f"training {steps} steps ...", flush=True)
        started = time.monotonic()
        repository = train_and_export(Path(tmp), steps)
        results["training_steps"] = steps
        results["training_s"] = time.monotonic() - started
        results["validation_loss"] = _validation_loss(Path(tmp) / "train.log")
        results.update(asyncio.run(measure(repository, args.smoke)))
    results["load_average_at_end"] = os.getloadavg()[0]
    text = table(results)
    print(text)
    if not args.smoke:
        print(f"written: {write_results('language-model', results, text)}")
    return 0


def _validation_loss(log: Path) -> float:
    """The last validation loss rank 0 logged."""
    lines = [
        line for line in log.read_text().splitlines() if "[rank 0]" in line and "validation loss" in line
    ]
    return float(lines[-1].split("validation loss ")[1].split()[0]) if lines else float("nan")


if __name__ == "__main__":
    sys.exit(main())
