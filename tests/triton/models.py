"""Tiny Python-backend models and the specs that serve them, shared by the Triton tests."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

from kubeforge.api.modeldeployment import ModelSpec

# Adds two FP32 vectors; also returns how many requests the execute() call served together, which
# shows the dynamic batcher at work. Parameters (from the spec's config) slow initialize down and
# record when it finished, so a test can tell "ready" from "still loading".
ADD_MODEL_PY = """
import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        time.sleep(float(params.get("init_sleep_seconds", "0")))
        if params.get("fail_to_load") == "yes":
            raise RuntimeError("this model refuses to load")
        if params.get("loaded_marker"):
            Path(params["loaded_marker"]).write_text(repr(time.time()))

    def execute(self, requests):
        responses = []
        for request in requests:
            a = pb_utils.get_input_tensor_by_name(request, "A").as_numpy()
            b = pb_utils.get_input_tensor_by_name(request, "B").as_numpy()
            together = np.full((a.shape[0], 1), len(requests), dtype=np.int32)
            outputs = [pb_utils.Tensor("SUM", (a + b).astype(np.float32)), pb_utils.Tensor("REQUESTS", together)]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses
"""

# Doubles its input with torch, which proves the stub's Python sees this environment's packages.
DOUBLE_MODEL_PY = """
import torch
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = torch.from_numpy(pb_utils.get_input_tensor_by_name(request, "X").as_numpy().copy())
            y = pb_utils.Tensor("Y", (x * 2).numpy())
            major = int(torch.__version__.split(".")[0])
            version = pb_utils.Tensor("TORCH_MAJOR", torch.full((x.shape[0], 1), major, dtype=torch.int32).numpy())
            responses.append(pb_utils.InferenceResponse(output_tensors=[y, version]))
        return responses
"""

# The config.pbtxt the "double" model's archive brings itself (its spec has no config).
DOUBLE_CONFIG = """
name: "double"
backend: "python"
max_batch_size: 4
input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ 3 ] }, { name: "TORCH_MAJOR" data_type: TYPE_INT32 dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
"""


def write_add_model(model_dir: Path, version: str = "1") -> Path:
    """The add model's files (model.py only: its config comes from the spec)."""
    (model_dir / version).mkdir(parents=True, exist_ok=True)
    (model_dir / version / "model.py").write_text(ADD_MODEL_PY)
    return model_dir


def add_model_config(**parameters: str) -> dict[str, Any]:
    """The add model's spec config (wire form): batching up to 8, a 20 ms batcher window."""
    return {
        "maxBatchSize": 8,
        "dynamicBatching": {"preferredBatchSizes": [4, 8], "maxQueueDelayMicroseconds": 20000},
        "instanceGroups": [{"kind": "KIND_CPU", "count": 1}],
        "inputs": [
            {"name": "A", "dataType": "TYPE_FP32", "dims": [4]},
            {"name": "B", "dataType": "TYPE_FP32", "dims": [4]},
        ],
        "outputs": [
            {"name": "SUM", "dataType": "TYPE_FP32", "dims": [4]},
            {"name": "REQUESTS", "dataType": "TYPE_INT32", "dims": [1]},
        ],
        "parameters": parameters,
    }


def add_model_spec(name: str, source: str, **parameters: str) -> ModelSpec:
    return ModelSpec.model_validate(
        {"name": name, "source": source, "format": "python", "config": add_model_config(**parameters)}
    )


def tar_gz(files: dict[str, str]) -> bytes:
    """A .tar.gz holding the given files (path -> text)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def double_model_archive(top: str = "double-model") -> bytes:
    """The double model as a release tarball would ship it: one top-level folder, its own config."""
    return tar_gz({f"{top}/config.pbtxt": DOUBLE_CONFIG, f"{top}/1/model.py": DOUBLE_MODEL_PY})
