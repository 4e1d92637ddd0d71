"""The vllm tool environment (tests/llm/vllm-env.sh): a python with the real vllm, installed once per
machine on first use; a failed install fails the tests that need it, it never skips them."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

ENV_SCRIPT = Path(__file__).resolve().parent / "vllm-env.sh"
INSTALL_TIMEOUT_S = 1800
CHECK_TIMEOUT_S = 300


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """A python with the real vllm; the install runs here when the machine has none yet."""
    result = subprocess.run(
        ["bash", str(ENV_SCRIPT)], stdout=subprocess.PIPE, text=True, check=True, timeout=INSTALL_TIMEOUT_S
    )
    return Path(result.stdout.strip().splitlines()[-1])


def run_in_vllm(
    python: Path, script: Path, args: Sequence[str], stdin: str | None
) -> subprocess.CompletedProcess[str]:
    """`script` under the vllm environment's python, with vllm's packages only (not the project's)."""
    return subprocess.run(
        [str(python), str(script), *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=CHECK_TIMEOUT_S,
        env={**os.environ, "PYTHONPATH": ""},
    )
