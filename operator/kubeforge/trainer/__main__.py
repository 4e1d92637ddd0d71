"""``python -m kubeforge.trainer`` / ``kubeforge-train``: train, then export the model for Triton."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist

from kubeforge.redact import redact_logs
from kubeforge.trainer.config import TrainerConfig, parse_args
from kubeforge.trainer.distributed import init_distributed, shutdown_distributed
from kubeforge.trainer.export import MODEL_NAME, export_triton_model
from kubeforge.trainer.language_model import LanguageModel
from kubeforge.trainer.llm_export import export_language_model
from kubeforge.trainer.loop import Trainer, TrainResult
from kubeforge.trainer.models import ModelSpecError, build_model, parameter_digest
from kubeforge.trainer.preemption import PREEMPTED_EXIT_CODE
from kubeforge.trainer.progress import OutputRecord
from kubeforge.trainer.rng import seed_everything
from kubeforge.trainer.storage import UnsupportedOutputError, resolve_output_path

log = logging.getLogger("kubeforge.trainer")

EXIT_USAGE = 2


def _configure_logging() -> None:
    # torchrun interleaves the workers' output on one stream: the rank tells the lines apart
    rank = os.environ.get("RANK", "0")
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    redact_logs()


def _output_target(config: TrainerConfig, model: object) -> tuple[Path, str] | None:
    """Where the export goes, checked before training so a bad URI or format costs seconds, not a run."""
    if config.output_uri is None:
        return None
    repository = resolve_output_path(config.output_uri, config.pvc_root)
    is_language_model = isinstance(model, LanguageModel)
    if is_language_model != (config.export_format == "python-llm"):
        wanted = "python-llm" if is_language_model else "python or pytorch"
        raise UnsupportedOutputError(
            f"{type(model).__name__} is {'a language' if is_language_model else 'not a language'} model: "
            f"export it as {wanted}, not {config.export_format}"
        )
    model_name = config.model_name or type(model).__name__.lower()
    if not MODEL_NAME.match(model_name):
        raise UnsupportedOutputError(f"model name {model_name!r} must match {MODEL_NAME.pattern}")
    return repository, model_name


def _finish(config: TrainerConfig, result: TrainResult, target: tuple[Path, str] | None) -> None:
    """Rank 0: export the trained model and report success."""
    output = None
    if target is not None and config.output_uri is not None:
        repository, model_name = target
        if config.export_format == "python-llm":
            model_dir = export_language_model(result.model, repository, model_name)
        else:
            model_dir = export_triton_model(
                result.model,
                result.example,
                repository,
                model_name,
                config.export_format,
                config.max_batch_size,
            )
        output = OutputRecord(uri=config.output_uri, path=str(model_dir))
        log.info("exported %s (%s backend) to %s", model_name, config.export_format, model_dir)
    result.progress.report(result.step, result.loss, state="succeeded", output=output)


def main(argv: Sequence[str] | None = None) -> int:
    """Train under torchrun's environment; see ``kubeforge.trainer`` for flags, variables and exit codes."""
    config = parse_args(argv)
    _configure_logging()
    # the same seed on every rank: identical initial parameters without relying on DDP's broadcast
    seed_everything(config.seed)
    try:
        model = build_model(config.model)
        target = _output_target(config, model)
    except (ModelSpecError, UnsupportedOutputError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    if config.checkpoint_dir is None:
        log.warning("no --checkpoint-dir or KUBEFORGE_CHECKPOINT_DIR: a restarted run starts from step 0")

    ctx = init_distributed()
    try:
        result = Trainer(config, ctx, model).run()
        log.info("parameters at step %d: sha256 %s", result.step, parameter_digest(result.model))
        if result.preempted:
            return PREEMPTED_EXIT_CODE
        if ctx.is_main:
            _finish(config, result, target)
        # the other ranks wait, so the job's pods all exit 0 only once the model is exported
        dist.barrier()
        return 0
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
