"""The training loop: DDP over a DistributedSampler, with checkpoints, resume, progress and preemption.

Determinism is a feature here: a run that is preempted and resumed ends with bit-identical parameters
to one that was not, because everything a step depends on is either a pure function of the seed
(data, data order) or saved in the checkpoint (parameters, optimizer moments, sampler position, RNG).
Validation reads the parameters and nothing else, so it changes nothing that training computes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from kubeforge.trainer.checkpoint import (
    CHECKPOINT_FORMAT,
    CheckpointState,
    checkpoint_path,
    load_checkpoint,
    load_latest_checkpoint,
    prune_checkpoints,
    remove_stale_temp_files,
    save_checkpoint,
)
from kubeforge.trainer.config import TrainerConfig
from kubeforge.trainer.data import ResumableDistributedSampler, batches_per_epoch
from kubeforge.trainer.distributed import DistContext
from kubeforge.trainer.preemption import PreemptionWatch
from kubeforge.trainer.progress import CheckpointRecord, ProgressReporter, ValidationRecord, utc_now
from kubeforge.trainer.rng import RngState, capture_rng_state, restore_rng_state, seed_everything
from kubeforge.trainer.tasks import Task, cross_entropy, task_for, validation_loss

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """How a training run ended."""

    model: nn.Module  # the unwrapped model, on the training device
    example: torch.Tensor  # a small batch of real inputs, for tracing the export
    step: int
    loss: float | None
    preempted: bool
    progress: ProgressReporter


def total_steps_for(config: TrainerConfig, steps_per_epoch: int) -> int:
    """``--steps``, or ``--epochs`` times the steps of one epoch."""
    if config.steps is not None:
        return config.steps
    return (config.epochs or 1) * steps_per_epoch


def _resume_point(config: TrainerConfig, ctx: DistContext) -> CheckpointState | None:
    """Rank 0 picks the newest complete checkpoint and every rank loads that same file.

    Deciding once and broadcasting keeps the ranks together even when the shared volume shows them
    different directory listings (NFS attribute caches). Every worker must see the checkpoint
    directory (the TrainingJob's checkpoint volume is mounted in each of them).
    """
    if config.checkpoint_dir is None:
        return None
    chosen: list[int | None] = [None]
    state: CheckpointState | None = None
    if ctx.is_main:
        remove_stale_temp_files(config.checkpoint_dir)
        state = load_latest_checkpoint(config.checkpoint_dir)
        chosen[0] = state["step"] if state is not None else None
    dist.broadcast_object_list(chosen, src=0)
    step = chosen[0]
    if step is not None and state is None:
        state = load_checkpoint(checkpoint_path(config.checkpoint_dir, step))
    return state


def _gather_rng_states(ctx: DistContext) -> list[RngState]:
    """Every rank's RNG state, indexed by rank (a collective: all ranks call it at the same step)."""
    states: list[RngState | None] = [None] * ctx.world_size
    dist.all_gather_object(states, capture_rng_state())
    return [state for state in states if state is not None]


def _agree(loss: torch.Tensor, stop_requested: bool, ctx: DistContext) -> tuple[float, bool]:
    """The loss averaged over ranks, and whether any rank was asked to stop, in one all-reduce.

    Every rank leaves the loop after the same step even if SIGTERM reached them at different moments,
    which keeps their collectives paired and the checkpointed state common to all of them.
    """
    packed = torch.stack([loss.detach().float(), torch.tensor(float(stop_requested), device=loss.device)])
    dist.all_reduce(packed)
    total_loss, stops = packed.tolist()
    return total_loss / ctx.world_size, stops > 0


def build_optimizer(config: TrainerConfig, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    """SGD with momentum (the classifiers' default), or AdamW (what transformers train well with)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum)


class Trainer:
    """One rank's view of a training run; ``run`` trains until done or preempted."""

    def __init__(self, config: TrainerConfig, ctx: DistContext, model: nn.Module) -> None:
        self.config = config
        self.ctx = ctx
        self.model = model.to(ctx.device)
        self.task: Task = task_for(model, config)
        self.dataset = self.task.training
        self.sampler = ResumableDistributedSampler(self.dataset, ctx.world_size, ctx.rank, config.seed)
        self.steps_per_epoch = batches_per_epoch(self.sampler, config.batch_size)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"dataset of {len(self.dataset)} samples over {ctx.world_size} ranks gives no full batch "
                f"of {config.batch_size}; lower --batch-size or raise --dataset-size"
            )
        self.total_steps = total_steps_for(config, self.steps_per_epoch)
        self.progress = ProgressReporter(
            config.checkpoint_dir if ctx.is_main else None,
            self.total_steps,
            config.termination_log if ctx.is_main else None,
        )
        self.step = 0
        self.loss: float | None = None

        resumed = _resume_point(config, ctx)
        if resumed is not None:
            # before DDP wraps the model: its constructor broadcasts rank 0's parameters to the others
            self.model.load_state_dict(resumed["model"])
        self.ddp = DistributedDataParallel(
            self.model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None
        )
        self.optimizer = build_optimizer(config, self.ddp.parameters())
        if resumed is not None:
            self._restore(resumed)
        else:
            # distinct per-rank streams (dropout, augmentation) that a checkpoint captures and restores
            seed_everything(config.seed + ctx.rank)

    def _restore(self, state: CheckpointState) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = state["step"]
        self.loss = state["loss"]
        validation = state.get("validation")
        if validation is not None:
            self.progress.record_validation(
                ValidationRecord(int(validation["step"]), validation["loss"], validation["perplexity"])
            )
        if len(state["rng"]) == self.ctx.world_size:
            restore_rng_state(state["rng"][self.ctx.rank])
        else:
            log.warning(
                "checkpoint was written by %d ranks, this run has %d: reseeding the RNGs instead",
                len(state["rng"]),
                self.ctx.world_size,
            )
            seed_everything(self.config.seed + self.ctx.rank + self.step)
        path = checkpoint_path(self.config.checkpoint_dir, self.step) if self.config.checkpoint_dir else None
        if path is not None:
            self.progress.record_checkpoint(
                CheckpointRecord(self.step, str(path), state["time"], state["loss"])
            )
        log.info(
            "resuming from %s at step %d (epoch %d, step %d of %d in it)",
            path,
            self.step,
            state["epoch"],
            state["step_in_epoch"],
            self.steps_per_epoch,
        )

    def _loader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        epoch, done_in_epoch = divmod(self.step, self.steps_per_epoch)
        self.sampler.set_position(epoch, done_in_epoch * self.config.batch_size)
        # its own generator: DataLoader draws a base seed per iterator, which must not move the global RNG;
        # no worker processes, the synthetic dataset is already in memory
        return DataLoader(
            self.dataset,
            batch_size=self.config.batch_size,
            sampler=self.sampler,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.config.seed),
        )

    def _train_step(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = cross_entropy(self.ddp(inputs.to(self.ctx.device)), labels.to(self.ctx.device))
        loss.backward()  # type: ignore[no-untyped-call]  # DDP averages the gradients over ranks here
        self.optimizer.step()
        return loss

    def _checkpoint(self) -> None:
        if self.config.checkpoint_dir is None:  # the same config on every rank: all skip the collective
            return
        rng_states = _gather_rng_states(self.ctx)
        if not self.ctx.is_main:
            return
        epoch, done_in_epoch = divmod(self.step, self.steps_per_epoch)
        state: CheckpointState = {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "epoch": epoch,
            "step_in_epoch": done_in_epoch,
            "world_size": self.ctx.world_size,
            "loss": float(self.loss if self.loss is not None else float("nan")),
            "time": utc_now(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng_states,
        }
        if self.progress.validation is not None:
            state["validation"] = asdict(self.progress.validation)
        path = save_checkpoint(self.config.checkpoint_dir, state)
        for removed in prune_checkpoints(self.config.checkpoint_dir, self.config.keep_last):
            log.debug("pruned %s", removed)
        self.progress.record_checkpoint(CheckpointRecord(self.step, str(path), state["time"], state["loss"]))
        self.progress.report(self.step, self.loss)
        log.info("checkpoint at step %d written to %s", self.step, path)

    def run(self) -> TrainResult:
        """Train from the current step to ``total_steps``, or until SIGTERM (then checkpoint and stop)."""
        preempted = False
        self.ddp.train()  # type: ignore[no-untyped-call]
        if self.step < self.total_steps:
            log.info("training steps %d..%d of %d", self.step + 1, self.total_steps, self.total_steps)
        with PreemptionWatch() as preemption:
            while self.step < self.total_steps and not preempted:
                for inputs, labels in self._loader():
                    loss = self._train_step(inputs, labels)
                    self.step += 1
                    self.loss, preempted = _agree(loss, preemption.requested, self.ctx)
                    self._after_step(preempted)
                    if preempted or self.step >= self.total_steps:
                        break
        if preempted:
            log.warning("SIGTERM: stopped after step %d of %d to resume later", self.step, self.total_steps)
        return TrainResult(
            model=self.model,
            example=self.dataset.tensors[0][:2],
            step=self.step,
            loss=self.loss,
            preempted=preempted,
            progress=self.progress,
        )

    def _after_step(self, preempted: bool) -> None:
        config = self.config
        finished = self.step >= self.total_steps
        if (
            self.task.validation is not None
            and not preempted
            and (finished or self.step % config.eval_every == 0)
        ):
            self._validate(self.task.validation)
        if self.step % config.log_every == 0 or finished:
            log.info("step %d/%d loss %.6f", self.step, self.total_steps, self.loss)
            self.progress.report(self.step, self.loss)
        if preempted or finished or self.step % config.checkpoint_every == 0:
            self._checkpoint()
        if config.sleep_per_step and not (preempted or finished):
            time.sleep(config.sleep_per_step)

    def _validate(self, validation: TensorDataset) -> None:
        loss = validation_loss(
            self.model,
            validation,
            self.ctx.rank,
            self.ctx.world_size,
            self.config.batch_size,
            self.ctx.device,
        )
        record = ValidationRecord.of(self.step, loss)
        self.progress.record_validation(record)
        log.info(
            "step %d/%d validation loss %.4f perplexity %.3f",
            self.step,
            self.total_steps,
            loss,
            record.perplexity,
        )
