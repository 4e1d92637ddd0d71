"""The reference run: 2 ranks under torchrun, trained once per session and examined by several tests."""

from __future__ import annotations

import importlib.util

import pytest

from tests.trainer.runs import MODEL_NAME, TRAINING_ARGS, ReferenceRun, run, torchrun_argv

# Without the trainer extra there is nothing to test here (the trainer image always has torch).
if importlib.util.find_spec("torch") is None:
    collect_ignore_glob = ["test_*.py"]


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
