"""The trainer's configuration: command-line flags, with ``KUBEFORGE_*`` environment variables as fallback."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from kubeforge.trainer.text_data import DEFAULT_CORPUS

ExportFormat = Literal["python", "pytorch", "python-llm"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("python", "pytorch", "python-llm")
OptimizerName = Literal["sgd", "adamw"]
OPTIMIZERS: tuple[OptimizerName, ...] = ("sgd", "adamw")
DEFAULT_MODEL = "kubeforge.trainer.models:MLP"
DEFAULT_EPOCHS = 3
DEFAULT_PVC_ROOT = "/mnt/pvc"

ENV_CHECKPOINT_DIR = "KUBEFORGE_CHECKPOINT_DIR"
ENV_OUTPUT_URI = "KUBEFORGE_OUTPUT_URI"
ENV_MODEL_NAME = "KUBEFORGE_MODEL_NAME"
ENV_EXPORT_FORMAT = "KUBEFORGE_EXPORT_FORMAT"
ENV_PVC_ROOT = "KUBEFORGE_PVC_ROOT"
ENV_TERMINATION_LOG = "KUBEFORGE_TERMINATION_LOG"
# Kubernetes' default terminationMessagePath; the kubelet creates it in every container
KUBERNETES_TERMINATION_LOG = Path("/dev/termination-log")


@dataclass(frozen=True)
class TrainerConfig:
    """Everything one training run needs to know; read once at start-up, identical on every rank."""

    model: str = DEFAULT_MODEL
    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    optimizer: OptimizerName = "sgd"
    seed: int = 0
    dataset_size: int = 4096
    corpus: Path = DEFAULT_CORPUS
    eval_every: int = 100
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 100
    keep_last: int = 3
    log_every: int = 10
    output_uri: str | None = None
    model_name: str | None = None
    export_format: ExportFormat = "python"
    max_batch_size: int = 64
    pvc_root: Path = Path(DEFAULT_PVC_ROOT)
    termination_log: Path | None = None
    sleep_per_step: float = 0.0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _export_format(value: str) -> ExportFormat | None:
    return next((fmt for fmt in EXPORT_FORMATS if fmt == value), None)


def _termination_log(flag: Path | None, env: Mapping[str, str]) -> Path | None:
    if flag is not None:
        return flag
    if env.get(ENV_TERMINATION_LOG):
        return Path(env[ENV_TERMINATION_LOG])
    return KUBERNETES_TERMINATION_LOG if KUBERNETES_TERMINATION_LOG.is_file() else None


def build_parser() -> argparse.ArgumentParser:
    """The ``kubeforge-train`` argument parser (flags only; ``parse_args`` applies the environment)."""
    parser = argparse.ArgumentParser(
        prog="kubeforge-train",
        description="Reference PyTorch DDP trainer; run it under torchrun.",
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="model class as module.path:ClassName (default: %(default)s)"
    )
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=_positive_int, help="optimizer steps to train in total")
    length.add_argument("--epochs", type=_positive_int, help=f"epochs to train (default: {DEFAULT_EPOCHS})")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="per-rank batch size")
    parser.add_argument("--lr", type=float, default=0.05, help="learning rate")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="sgd",
        help="sgd (with --momentum; the default) or adamw (what transformers train well with)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the data order")
    parser.add_argument(
        "--dataset-size", type=_positive_int, default=4096, help="samples in the synthetic dataset"
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=DEFAULT_CORPUS,
        help="text a language model learns (default: the shipped public-domain corpus)",
    )
    parser.add_argument(
        "--eval-every",
        type=_positive_int,
        default=100,
        help="validation loss every N steps and at the end (models with a validation set)",
    )
    parser.add_argument(
        "--checkpoint-dir", type=Path, help=f"checkpoints and progress.json (env {ENV_CHECKPOINT_DIR})"
    )
    parser.add_argument(
        "--checkpoint-every", type=_positive_int, default=100, help="checkpoint every N steps"
    )
    parser.add_argument("--keep-last", type=_positive_int, default=3, help="checkpoints to keep")
    parser.add_argument(
        "--log-every",
        type=_positive_int,
        default=10,
        help="log the loss and update progress.json every N steps",
    )
    parser.add_argument("--output-uri", help=f"Triton model repository to export to (env {ENV_OUTPUT_URI})")
    parser.add_argument("--model-name", help=f"model name in the repository (env {ENV_MODEL_NAME})")
    parser.add_argument(
        "--export-format",
        choices=EXPORT_FORMATS,
        help="python (Python backend, the default), pytorch (libtorch backend), or python-llm (a language "
        f"model as a decoupled Python-backend model that streams tokens) (env {ENV_EXPORT_FORMAT})",
    )
    parser.add_argument(
        "--max-batch-size", type=_positive_int, default=64, help="max_batch_size of the exported config.pbtxt"
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        help=f"also write progress here (env {ENV_TERMINATION_LOG}; default {KUBERNETES_TERMINATION_LOG} "
        "when it exists)",
    )
    parser.add_argument(
        "--sleep-per-step",
        type=_non_negative_float,
        default=0.0,
        help="seconds to sleep after each step (tests and demos of preemption; default 0)",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> TrainerConfig:
    """Parse flags, fill unset ones from the environment, and validate; exits with status 2 on bad input."""
    env = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)

    export_format = _export_format(args.export_format or env.get(ENV_EXPORT_FORMAT) or "python")
    if export_format is None:
        parser.error(f"{ENV_EXPORT_FORMAT}: expected one of {', '.join(EXPORT_FORMATS)}")
    checkpoint_dir = args.checkpoint_dir or (
        Path(env[ENV_CHECKPOINT_DIR]) if env.get(ENV_CHECKPOINT_DIR) else None
    )
    if checkpoint_dir is not None:
        # absolute, because progress.json reports checkpoint paths to a reader with another working directory
        checkpoint_dir = checkpoint_dir.absolute()
    if ":" not in args.model:
        parser.error(f"--model {args.model!r}: expected module.path:ClassName")

    return TrainerConfig(
        model=args.model,
        steps=args.steps,
        epochs=None if args.steps is not None else (args.epochs or DEFAULT_EPOCHS),
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        optimizer=args.optimizer,
        seed=args.seed,
        dataset_size=args.dataset_size,
        corpus=args.corpus,
        eval_every=args.eval_every,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        keep_last=args.keep_last,
        log_every=args.log_every,
        output_uri=args.output_uri or env.get(ENV_OUTPUT_URI) or None,
        model_name=args.model_name or env.get(ENV_MODEL_NAME) or None,
        export_format=export_format,
        max_batch_size=args.max_batch_size,
        pvc_root=Path(env.get(ENV_PVC_ROOT) or DEFAULT_PVC_ROOT),
        termination_log=_termination_log(args.termination_log, env),
        sleep_per_step=args.sleep_per_step,
    )
