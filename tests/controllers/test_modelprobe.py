"""A reconcile never waits for a Triton server: the probe runs in the background, one at a time."""

from __future__ import annotations

import asyncio
import time

from kubeforge.api.modeldeployment import ModelState
from kubeforge.controllers.modelprobe import ModelProber
from kubeforge.triton.client import TritonObservation

KEY = ("ns", "md")
URL = "http://10.0.0.1:8000"


async def _scenario() -> None:
    release = asyncio.Event()
    fetches: list[str] = []

    async def fetch(url: str, timeout: float) -> TritonObservation:
        fetches.append(url)
        await release.wait()  # a server behind a policy that drops packets: it answers late
        return TritonObservation(
            url, reachable=True, ready=True, models=(ModelState(name="m", state="READY"),)
        )

    prober = ModelProber(fetch=fetch)
    changed: list[tuple[str, str]] = []
    prober.on_change = changed.append
    started = time.monotonic()
    assert prober.latest(KEY, URL) == (None, None)
    assert prober.latest(KEY, URL) == (None, None)
    assert time.monotonic() - started < 0.1  # never waited
    await asyncio.sleep(0)
    assert fetches == [URL]  # one probe at a time
    release.set()
    await asyncio.sleep(0.01)
    assert changed == [KEY]
    states, error = prober.latest(KEY, URL)
    assert states is not None and [s.name for s in states] == ["m"] and error is None
    await asyncio.sleep(0.01)
    assert changed == [KEY]  # the same answer again: no reconcile
    prober.forget(KEY)
    assert prober.latest(KEY, URL) == (None, None)
    await prober.close()


def test_the_probe_runs_beside_the_reconcile() -> None:
    asyncio.run(_scenario())
