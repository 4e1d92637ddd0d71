"""The image entrypoint turns a SIGTERM'd torchrun into exit code 143 (retryable), not torchrun's 1."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.torch  # tests/harness.py fails these where torch is missing

WORKER = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
print("ready", flush=True)
while True:
    time.sleep(0.1)
"""


def test_sigterm_exits_143(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    argv = [
        sys.executable,
        "-m",
        "kubeforge.trainer.launch",
        "--standalone",
        "--nproc-per-node",
        "1",
        str(script),
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    for line in proc.stdout:
        if "ready" in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143


def test_success_passes_through(tmp_path: Path) -> None:
    script = tmp_path / "ok.py"
    script.write_text("print('done')\n")
    argv = [
        sys.executable,
        "-m",
        "kubeforge.trainer.launch",
        "--standalone",
        "--nproc-per-node",
        "1",
        str(script),
    ]
    assert subprocess.run(argv, capture_output=True, timeout=120).returncode == 0
