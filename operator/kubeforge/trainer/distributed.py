"""The process group, from the environment torchrun (or a TrainingJob's worker pod) sets."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job: its ranks and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, progress.json and the exported model; the others only compute."""
        return self.rank == 0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def default_single_process_env(environ: MutableMapping[str, str]) -> None:
    """Fill in a one-process rendezvous when started without torchrun (``python -m kubeforge.trainer``)."""
    if "WORLD_SIZE" in environ:
        return
    environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    environ.setdefault("MASTER_ADDR", "127.0.0.1")
    environ.setdefault("MASTER_PORT", str(_free_port()))


def init_distributed() -> DistContext:
    """Join the process group: nccl with one GPU per local rank when CUDA is available, else gloo on CPU.

    ``init_method="env://"`` reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT, the variables torchrun
    sets for each worker (and Kubeflow's PyTorchJob convention the operator follows).
    """
    default_single_process_env(os.environ)
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        backend = "nccl"
        device = torch.device("cuda", local_rank)
        # before init: NCCL binds each process to the current device, and collectives of
        # Python objects (all_gather_object) stage through it.
        torch.cuda.set_device(device)
    else:
        backend = "gloo"
        device = torch.device("cpu")
    dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    log.info(
        "joined process group: rank %d/%d, local rank %d, backend %s, device %s",
        rank,
        world_size,
        local_rank,
        backend,
        device,
    )
    return DistContext(
        rank=rank, world_size=world_size, local_rank=local_rank, backend=backend, device=device
    )


def shutdown_distributed() -> None:
    """Leave the process group (a no-op when it was never joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
