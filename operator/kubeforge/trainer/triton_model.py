"""A Triton Python-backend model that serves the TorchScript file next to it.

The exporter copies this file verbatim to ``<repository>/<model>/<version>/model.py`` beside
``model.pt``, so it must stand alone: it imports only the standard library, torch, and
``triton_python_backend_utils`` (which exists only inside Triton's Python-backend stub process, hence
the import inside the methods). Input and output names come from the model's ``config.pbtxt``.
See https://github.com/triton-inference-server/python_backend#usage for the interface.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

TORCHSCRIPT_FILE = "model.pt"


class TritonPythonModel:
    """Runs every request of a (dynamic) batch through one TorchScript forward pass."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the TorchScript module onto the instance's device (CPU, or the GPU Triton assigned)."""
        config = json.loads(args["model_config"])
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        if args.get("model_instance_kind") == "GPU" and torch.cuda.is_available():
            self.device = torch.device("cuda", int(args.get("model_instance_device_id", "0")))
        else:
            self.device = torch.device("cpu")
        # the stub imports model.py from the version directory, so __file__ locates model.pt
        path = Path(__file__).with_name(TORCHSCRIPT_FILE)
        module = torch.jit.load(str(path), map_location=self.device)  # type: ignore[no-untyped-call]
        self.module = module.eval()

    def execute(self, requests: list[Any]) -> list[Any]:
        """Concatenate the requests along the batch dimension, run once, and split the outputs back."""
        import triton_python_backend_utils as pb_utils

        try:
            sizes, inputs = self._gather_inputs(requests, pb_utils)
            with torch.inference_mode():
                outputs = self.module(*inputs)
            if isinstance(outputs, torch.Tensor):
                outputs = (outputs,)
            per_output = [output.detach().cpu().split(sizes) for output in outputs]
        except Exception as exc:  # noqa: BLE001 - any failure becomes an error response, not a dead model
            error = pb_utils.TritonError(f"{type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]

        responses = []
        for index in range(len(requests)):
            tensors = [
                pb_utils.Tensor(name, chunks[index].contiguous().numpy())
                for name, chunks in zip(self.output_names, per_output, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def _gather_inputs(self, requests: list[Any], pb_utils: Any) -> tuple[list[int], list[torch.Tensor]]:
        sizes: list[int] = []
        columns: list[list[torch.Tensor]] = [[] for _ in self.input_names]
        for request in requests:
            for column, name in zip(columns, self.input_names, strict=True):
                # a copy: Triton's buffers are read-only, torch.from_numpy would alias them (and warn)
                column.append(torch.tensor(pb_utils.get_input_tensor_by_name(request, name).as_numpy()))
            sizes.append(int(columns[0][-1].shape[0]))
        return sizes, [torch.cat(column).to(self.device) for column in columns]

    def finalize(self) -> None:
        """Release the module when Triton unloads the model."""
        del self.module
