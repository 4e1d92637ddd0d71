"""The reference run: 2 ranks under torchrun, trained once per session and examined by several tests."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from kubeforge.testing.triton import TritonServer, run_tritonserver
from tests.harness import TORCH, available, missing
from tests.trainer.runs import (
    LM_MODEL_NAME,
    LM_SINGLE_MODEL_NAME,
    LM_TRAINING_ARGS,
    MODEL_NAME,
    TRAINING_ARGS,
    ReferenceRun,
    run,
    torchrun_argv,
)


class _NeedsTorch(pytest.Module):
    """A trainer test module where torch is missing: collecting it fails, saying how to install torch."""

    def collect(self) -> NoReturn:
        missing(TORCH.missing_message())


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Where torch is missing, each test module reports that (never imported, never silently left out)."""
    return None if available(TORCH) else _NeedsTorch.from_parent(parent, path=module_path)


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    root = tmp_path_factory.mktemp("reference")
    checkpoint_dir, repository = root / "checkpoints", root / "repository"
    args = [
        *TRAINING_ARGS,
        "--checkpoint-dir", str(checkpoint_dir),
        "--output-uri", str(repository),
        "--model-name", MODEL_NAME,
        "--termination-log", str(root / "termination-log"),
    ]  # fmt: skip
    result = run(torchrun_argv(2, args), root / "train.log")
    assert result.returncode == 0, result.output
    return ReferenceRun(result, checkpoint_dir, repository, root / "termination-log")


@pytest.fixture(scope="session")
def language_model_run(tmp_path_factory: pytest.TempPathFactory) -> ReferenceRun:
    """The byte-level language model trained by 2 ranks and exported as a streaming Triton model."""
    root = tmp_path_factory.mktemp("language-model")
    checkpoint_dir, repository = root / "checkpoints", root / "repository"
    args = [
        *LM_TRAINING_ARGS,
        "--checkpoint-dir", str(checkpoint_dir),
        "--output-uri", str(repository),
        "--model-name", LM_MODEL_NAME,
        "--export-format", "python-llm",
        "--termination-log", str(root / "termination-log"),
    ]  # fmt: skip
    result = run(torchrun_argv(2, args), root / "train.log")
    assert result.returncode == 0, result.output
    return ReferenceRun(result, checkpoint_dir, repository, root / "termination-log", LM_MODEL_NAME)


@pytest.fixture(scope="session")
def llm_repository(language_model_run: ReferenceRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository with the language model twice: as exported (16 slots), and with one slot."""
    repository = tmp_path_factory.mktemp("llm-repository")
    shutil.copytree(language_model_run.model_dir, repository / LM_MODEL_NAME)
    shutil.copytree(language_model_run.model_dir, repository / LM_SINGLE_MODEL_NAME)
    config = repository / LM_SINGLE_MODEL_NAME / "config.pbtxt"
    text = config.read_text().replace(f'name: "{LM_MODEL_NAME}"', f'name: "{LM_SINGLE_MODEL_NAME}"')
    single = re.sub(r'(key: "max_concurrent_streams"\s+value: \{ string_value: )"16"', r'\1"1"', text)
    assert single != text
    config.write_text(single)
    return repository


@pytest.fixture(scope="session")
def llm_server(llm_repository: Path) -> Iterator[TritonServer]:
    """The real tritonserver serving `llm_repository`, shared by the modules that stream from it."""
    with run_tritonserver(repository=llm_repository, wait="ready", startup_timeout=120) as triton:
        yield triton
