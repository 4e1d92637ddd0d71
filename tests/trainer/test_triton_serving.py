"""The python flavour of the exported model, served by a real Triton server (nvidia-pytriton's, on CPU)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from kubeforge.testing.triton import run_tritonserver
from kubeforge.trainer.checkpoint import load_checkpoint
from kubeforge.trainer.models import MLP
from tests.trainer.runs import MODEL_NAME, TOTAL_STEPS, ReferenceRun

pytestmark = [pytest.mark.torch, pytest.mark.triton]  # tests/harness.py fails them where either is missing

BATCHED = f"{MODEL_NAME}-batched"
BATCH_SIZES = (1, 3, 8, 8, 5, 2)


def _repository(reference_run: ReferenceRun, root: Path) -> Path:
    """The exported model as it is, plus a copy whose batcher waits long enough to merge requests."""
    repository = root / "repository"
    shutil.copytree(reference_run.model_dir, repository / MODEL_NAME)
    shutil.copytree(reference_run.model_dir, repository / BATCHED)
    config = repository / BATCHED / "config.pbtxt"
    text = config.read_text().replace(f'name: "{MODEL_NAME}"', f'name: "{BATCHED}"')
    # 0.5 s instead of 100 us: requests sent together are then merged whatever the machine's speed,
    # which exercises model.py's concatenate-and-split path under the real server
    config.write_text(
        text.replace("max_queue_delay_microseconds: 100\n", "max_queue_delay_microseconds: 500000\n")
    )
    return repository


def _infer_all(
    client: httpclient.InferenceServerClient, model: str, batches: list[np.ndarray]
) -> list[np.ndarray]:
    """Send every batch as its own request, all in flight at once, and collect the outputs in order."""
    pending = []
    for batch in batches:
        request = httpclient.InferInput("INPUT__0", list(batch.shape), "FP32")
        request.set_data_from_numpy(batch)
        outputs = [httpclient.InferRequestedOutput("OUTPUT__0")]
        pending.append(client.async_infer(model, [request], outputs=outputs))
    return [request.get_result().as_numpy("OUTPUT__0") for request in pending]


def test_triton_serves_the_trained_model(tmp_path: Path, reference_run: ReferenceRun) -> None:
    model = MLP()
    model.load_state_dict(
        load_checkpoint(reference_run.checkpoint_dir / f"ckpt-{TOTAL_STEPS:08d}.pt")["model"]
    )
    model.eval()
    rng = np.random.default_rng(3)
    batches = [rng.standard_normal((size, 16), dtype=np.float32) for size in BATCH_SIZES]
    with torch.no_grad():
        expected = [model(torch.from_numpy(batch)).numpy() for batch in batches]

    with run_tritonserver(repository=_repository(reference_run, tmp_path), wait="ready") as server:
        # tritonclient.http runs on gevent: concurrency through its own async_infer, not threads
        client = httpclient.InferenceServerClient(server.http_address, concurrency=len(batches))
        try:
            metadata = client.get_model_metadata(MODEL_NAME)
            assert metadata["inputs"] == [{"name": "INPUT__0", "datatype": "FP32", "shape": [-1, 16]}]
            assert metadata["outputs"] == [{"name": "OUTPUT__0", "datatype": "FP32", "shape": [-1, 4]}]
            served = _infer_all(client, MODEL_NAME, batches)
            merged = _infer_all(client, BATCHED, batches)
            statistics = client.get_inference_statistics(BATCHED)["model_stats"][0]
        finally:
            client.close()

    for batch, want, got, got_merged in zip(batches, expected, served, merged, strict=True):
        assert got.shape == got_merged.shape == (batch.shape[0], 4)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got_merged, want, rtol=0, atol=1e-5)
    assert statistics["inference_count"] == sum(BATCH_SIZES)
    assert statistics["execution_count"] < len(BATCH_SIZES), statistics  # some requests shared a forward pass
