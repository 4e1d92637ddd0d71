"""`kubeforge openai-front` on this machine, for tests and benchmarks: started on a free loopback port with
the arguments the operator gives its `openai` container, and plain HTTP calls to it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubeforge.testing.triton import LOOPBACK, free_port


def with_flag_values(args: Sequence[str], values: Mapping[str, str]) -> list[str]:
    """`args` with the value after each flag of `values` replaced (a pod's ports and paths moved to this
    machine's)."""
    return [values.get(previous, arg) for previous, arg in zip(["", *args], args, strict=False)]


def call(url: str, body: Mapping[str, Any] | None = None, timeout: float = 60) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a JSON POST when `body` is given; HTTP errors are answers too."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@dataclass
class RunningFront:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def call(self, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, bytes]:
        return call(f"{self.url}{path}", body)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running_front(
    args: Sequence[str],
    log: Path,
    *,
    ready: bool = True,
    timeout: float = 30,
    host: str = LOOPBACK,
    port: int | None = None,
) -> Iterator[RunningFront]:
    """The front with `args` on `host` (its `--port` is replaced by `port`, else a free one), once
    /health answers: 200 when `ready`, else any status (no Triton behind it)."""
    port = port or free_port()
    argv = [sys.executable, "-m", "kubeforge", "openai-front", "--host", host,
            *with_flag_values(["--port", "0", *args], {"--port": str(port)})]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    front = RunningFront(f"http://{host}:{port}", process, log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the OpenAI front exited ({process.returncode}): {front.output()}")
            try:
                status, _ = front.call("/health")
                if status == 200 or not ready:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the OpenAI front was not ready in {timeout:.0f} s: {front.output()}")
            time.sleep(0.1)
        yield front
    finally:
        process.terminate()
        process.wait(10)
