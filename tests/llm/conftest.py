"""The vllm tool environment (tests/llm/vllm-env.sh): a python with the real vllm, installed once per
machine on first use; a failed install fails the tests that need it, it never skips them."""

from __future__ import annotations

import subprocess
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
