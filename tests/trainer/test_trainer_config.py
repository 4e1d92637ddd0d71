"""Flags and KUBEFORGE_* variables -> TrainerConfig, and bad input refused before any training."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubeforge.trainer.__main__ import main
from kubeforge.trainer.config import DEFAULT_EPOCHS, parse_args

pytestmark = pytest.mark.torch

ENV = {
    "KUBEFORGE_CHECKPOINT_DIR": "/checkpoints/job",
    "KUBEFORGE_OUTPUT_URI": "pvc://models/repo",
    "KUBEFORGE_MODEL_NAME": "from-env",
    "KUBEFORGE_EXPORT_FORMAT": "pytorch",
    "KUBEFORGE_PVC_ROOT": "/mnt/volumes",
    "KUBEFORGE_TERMINATION_LOG": "/tmp/termination-log",
}


def test_environment_fills_what_flags_leave_unset() -> None:
    config = parse_args([], ENV)
    assert config.checkpoint_dir == Path("/checkpoints/job")
    assert config.output_uri == "pvc://models/repo"
    assert config.model_name == "from-env"
    assert config.export_format == "pytorch"
    assert config.pvc_root == Path("/mnt/volumes")
    assert config.termination_log == Path("/tmp/termination-log")
    assert (config.steps, config.epochs) == (None, DEFAULT_EPOCHS)


def test_flags_win_over_the_environment() -> None:
    argv = [
        "--checkpoint-dir",
        "/elsewhere",
        "--output-uri",
        "/repo",
        "--model-name",
        "flag",
        "--export-format",
        "python",
    ]
    config = parse_args([*argv, "--steps", "5", "--termination-log", "/dev/null"], ENV)
    assert config.termination_log == Path("/dev/null")
    assert (config.checkpoint_dir, config.output_uri, config.model_name) == (
        Path("/elsewhere"),
        "/repo",
        "flag",
    )
    assert config.export_format == "python"
    assert (config.steps, config.epochs) == (5, None)


def test_defaults_without_environment() -> None:
    config = parse_args([], {})
    assert config.checkpoint_dir is None and config.output_uri is None
    assert config.export_format == "python"
    assert config.pvc_root == Path("/mnt/pvc")


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--steps", "0"], {}),
        (["--steps", "5", "--epochs", "1"], {}),
        (["--model", "no_class_here"], {}),
        ([], {"KUBEFORGE_EXPORT_FORMAT": "onnx"}),
        (["--export-format", "onnx"], {}),
    ],
)
def test_bad_arguments_exit_2(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(argv, env)
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--output-uri", "s3://bucket/models"], "scheme s3:// is not supported"),
        (["--output-uri", "/tmp/repo", "--model-name", "bad/name"], "model name"),
        (["--model", "kubeforge.trainer.models:Nope"], "has no attribute Nope"),
        (["--model", "collections:OrderedDict"], "is not a torch.nn.Module"),
        (["--model", "torch.nn:Identity"], "must define input_shape and num_classes"),
    ],
)
def test_unusable_model_or_output_fails_before_training(
    argv: list[str], message: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    assert main([*argv, "--steps", "1"]) == 2
    assert message in caplog.text
