"""Export a trained model as a Triton model repository entry.

Layout written under the repository (``--output-uri``)::

    <repository>/<model_name>/config.pbtxt
    <repository>/<model_name>/1/model.pt      TorchScript (traced on CPU from an example batch)
    <repository>/<model_name>/1/model.py      python flavour only: ``triton_model.TritonPythonModel``

``pytorch`` targets Triton's libtorch backend; ``python`` (the default) wraps the same TorchScript file
in a Python-backend model, for Triton builds without libtorch (such as the CPU server in tests).
Each file is replaced atomically and ``config.pbtxt`` is written last, so a Triton server polling the
repository never loads a config whose model file is still being written.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import torch
from torch import nn

from kubeforge.trainer import triton_model
from kubeforge.trainer.atomic import atomic_write, atomic_write_bytes
from kubeforge.trainer.config import ExportFormat
from kubeforge.trainer.triton_config import render_config_pbtxt, tensor_specs

# Triton model names as the ModelDeployment API accepts them (api.modeldeployment.MODEL_NAME_PATTERN)
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CONFIG_FILE = "config.pbtxt"
PYTHON_MODEL_FILE = "model.py"


def trace_model(model: nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """TorchScript of a CPU copy of ``model`` in eval mode, traced with ``example`` (a batch)."""
    module = copy.deepcopy(model).to("cpu").eval()
    with torch.no_grad():
        traced: torch.jit.ScriptModule = torch.jit.trace(  # type: ignore[no-untyped-call]
            module, (example.to("cpu"),)
        )
    return traced


def export_triton_model(
    model: nn.Module,
    example: torch.Tensor,
    repository: Path,
    model_name: str,
    export_format: ExportFormat,
    max_batch_size: int,
    version: int = 1,
) -> Path:
    """Write ``model`` into ``repository`` as ``model_name`` (version ``version``); returns its directory."""
    if not MODEL_NAME.match(model_name):
        raise ValueError(f"model name {model_name!r} must match {MODEL_NAME.pattern}")
    if example.shape[0] > max_batch_size:
        raise ValueError(f"example batch of {example.shape[0]} exceeds max_batch_size {max_batch_size}")
    traced = trace_model(model, example)
    with torch.no_grad():
        outputs = traced(example.to("cpu"))
    output_list = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    config = render_config_pbtxt(
        model_name,
        export_format,
        inputs=tensor_specs("INPUT", [example]),
        outputs=tensor_specs("OUTPUT", output_list),
        max_batch_size=max_batch_size,
    )

    model_dir = repository / model_name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(
        version_dir / triton_model.TORCHSCRIPT_FILE,
        lambda handle: torch.jit.save(traced, handle),  # type: ignore[no-untyped-call]
    )
    python_model = version_dir / PYTHON_MODEL_FILE
    if export_format == "python":
        atomic_write_bytes(python_model, Path(triton_model.__file__).read_bytes())
    else:
        python_model.unlink(missing_ok=True)  # left by an earlier python-flavour export
    atomic_write_bytes(model_dir / CONFIG_FILE, config.encode())
    return model_dir
