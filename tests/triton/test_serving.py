"""The operator's Triton pod, run for real: the Deployment builder's init container assembles the
repository (a pvc:// model with a rendered config, an http:// archive with its own), and its Triton
container serves both from the nvidia-pytriton tritonserver, with ports and paths made local."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.http.aio as aiohttpclient
from tritonclient.utils import InferenceServerException

from kubeforge.api.modeldeployment import ModelDeployment
from kubeforge.builders.modeldeployment import build_triton_deployment
from kubeforge.settings import Settings
from kubeforge.testing.triton import TritonInstall, TritonServer
from kubeforge.testing.triton_pod import run_init_container, run_triton_container
from kubeforge.triton.client import model_states

from .conftest import serve_directory
from .models import add_model_config, double_model_archive, write_add_model

pytestmark = pytest.mark.triton

INIT_SLEEP_SECONDS = 1.5


@dataclass
class Pod:
    """The Triton pod, started locally, and what was seen while it started."""

    server: TritonServer
    container: dict[str, Any]
    init_log: str
    loaded_marker: Path
    readiness: list[tuple[float, int | None]]  # (time, /v2/health/ready status; None: not answering)


def model_deployment(pvc_source: str, http_source: str, marker: Path) -> ModelDeployment:
    parameters = {"init_sleep_seconds": str(INIT_SLEEP_SECONDS), "loaded_marker": str(marker)}
    return ModelDeployment.model_validate(
        {
            "metadata": {"name": "demo", "namespace": "team-a", "uid": "0000-uid", "generation": 1},
            "spec": {
                "models": [
                    {
                        "name": "add",
                        "source": pvc_source,
                        "format": "python",
                        "config": add_model_config(**parameters),
                    },
                    {"name": "double", "source": http_source, "format": "python"},
                ],
                "replicas": 1,
            },
        }
    )


def watch_readiness(server: TritonServer, timeout: float = 90.0) -> list[tuple[float, int | None]]:
    """Poll /v2/health/ready until it answers 200; every observation with its time."""
    seen: list[tuple[float, int | None]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log()
        status = server.http_get("/v2/health/ready", timeout=1.0)
        seen.append((time.time(), status))
        if status == 200:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"not ready within {timeout}s:\n{server.log()}")


@pytest.fixture(scope="module")
def pod(triton_install: TritonInstall, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    root = tmp_path_factory.mktemp("pod")
    pvc_root, repo, www = root / "pvc", root / "repo", root / "www"
    write_add_model(pvc_root / "models" / "add")
    www.mkdir()
    (www / "double.tar.gz").write_bytes(double_model_archive())
    marker = root / "add-loaded"
    with serve_directory(www) as base:
        md = model_deployment("pvc://models/add", f"{base}/double.tar.gz?v=1", marker)
        pod_spec = build_triton_deployment(md, Settings())["spec"]["template"]["spec"]
        init = run_init_container(
            pod_spec["initContainers"][0], paths={"/models": repo, "/mnt/pvc": pvc_root}
        )
    assert init.returncode == 0, init.stderr
    container = pod_spec["containers"][0]
    with run_triton_container(
        container, paths={"/models": repo}, install=triton_install, wait=None
    ) as server:
        yield Pod(server, container, init.stderr, marker, watch_readiness(server))


def test_init_container_logged_each_model(pod: Pod) -> None:
    assert "model add: fetching pvc://models/add" in pod.init_log
    assert "model double: fetching http://127.0.0.1:" in pod.init_log
    assert "model repository ready: add, double" in pod.init_log


def test_ready_only_once_every_model_is_loaded(pod: Pod) -> None:
    loaded_at = float(pod.loaded_marker.read_text())
    first_ready = next(t for t, status in pod.readiness if status == 200)
    assert first_ready >= loaded_at
    # it was observed not ready while the model was still initializing (Triton opens its endpoints
    # only after the initial load in --model-control-mode=none, so "not ready" is "not answering")
    assert any(t < loaded_at and status != 200 for t, status in pod.readiness)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert pod.server.probe_succeeds(pod.container[probe]), probe


def test_add_model_infers(pod: Pod) -> None:
    client = httpclient.InferenceServerClient(pod.server.http_address)
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 0.5, dtype=np.float32)
    inputs = [httpclient.InferInput("A", [2, 4], "FP32"), httpclient.InferInput("B", [2, 4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("add", inputs)
    np.testing.assert_array_equal(result.as_numpy("SUM"), a + b)
    client.close()


def test_served_config_has_the_spec_batching(pod: Pod) -> None:
    client = httpclient.InferenceServerClient(pod.server.http_address)
    config = client.get_model_config("add")
    client.close()
    assert config["max_batch_size"] == 8
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 20000
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_CPU", 1)]
    assert config["parameters"]["init_sleep_seconds"] == {"string_value": str(INIT_SLEEP_SECONDS)}


def test_dynamic_batcher_combines_concurrent_requests(pod: Pod) -> None:
    async def one(client: aiohttpclient.InferenceServerClient, value: float) -> tuple[float, int]:
        inputs = [
            aiohttpclient.InferInput("A", [1, 4], "FP32"),
            aiohttpclient.InferInput("B", [1, 4], "FP32"),
        ]
        inputs[0].set_data_from_numpy(np.full((1, 4), value, dtype=np.float32))
        inputs[1].set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        result = await client.infer("add", inputs)
        return float(result.as_numpy("SUM")[0, 0]), int(result.as_numpy("REQUESTS")[0, 0])

    async def burst() -> list[tuple[float, int]]:
        async with aiohttpclient.InferenceServerClient(pod.server.http_address) as client:
            return await asyncio.gather(*(one(client, float(v)) for v in range(16)))

    results = asyncio.run(burst())
    assert [s for s, _ in results] == [v + 1.0 for v in range(16)]  # each request got its own answer
    assert max(n for _, n in results) > 1  # and some were executed together


def test_http_archive_model_runs_torch_over_grpc(pod: Pod) -> None:
    import torch

    client = grpcclient.InferenceServerClient(pod.server.grpc_url)
    x = np.array([[1.0, 2.0, 3.0]], dtype=np.float32)
    inputs = [grpcclient.InferInput("X", [1, 3], "FP32")]
    inputs[0].set_data_from_numpy(x)
    result = client.infer("double", inputs)
    client.close()
    np.testing.assert_array_equal(result.as_numpy("Y"), 2 * x)
    assert int(result.as_numpy("TORCH_MAJOR")[0, 0]) == int(torch.__version__.split(".")[0])


def test_model_states_of_the_live_server(pod: Pod) -> None:
    observed = asyncio.run(model_states(pod.server.http_url, timeout=5.0))
    assert (observed.reachable, observed.ready, observed.error) == (True, True, None)
    assert [(m.name, m.version, m.state) for m in observed.models] == [
        ("add", "1", "READY"),
        ("double", "1", "READY"),
    ]
    assert observed.model("double") is not None


def test_metrics_count_inferences(pod: Pod) -> None:
    import urllib.request

    with urllib.request.urlopen(pod.server.metrics_url, timeout=5) as response:
        metrics = response.read().decode()
    # the series the autoscaling targets are built on
    assert 'nv_inference_request_success{model="add",version="1"}' in metrics
    assert "nv_inference_queue_duration_us" in metrics


def test_apis_no_client_needs_are_closed_on_both_protocols(pod: Pod) -> None:
    server = pod.server
    region = b'{"key": "/triton_python_backend_shm_region_1", "offset": 0, "byte_size": 8}'
    assert server.http_post("/v2/systemsharedmemory/region/r/register", region) == 403
    assert server.http_get("/v2/systemsharedmemory/status") == 403
    assert server.http_get("/v2/trace/setting") == 403
    assert server.http_post("/v2/logging", b'{"log_verbose_level": 1}') == 403
    # a header with a guessed value does not open them
    guess = {"kubeforge-restricted": "0000"}
    assert server.http_post("/v2/systemsharedmemory/region/r/register", region, guess) == 403
    client = grpcclient.InferenceServerClient(server.grpc_url)
    with pytest.raises(InferenceServerException, match=r"(?i)restricted|permission"):
        client.get_system_shared_memory_status()
    # what the operator's probe and the clients use stays open (mode none: no load or unload anyway)
    assert server.http_post("/v2/repository/index") == 200
    assert server.http_get("/v2/models/add/config") == 200
    client.close()


def test_explicit_mode_closes_loading_and_unloading(triton_install: TritonInstall, tmp_path: Path) -> None:
    write_add_model(tmp_path / "pvc" / "models" / "add")
    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "demo", "namespace": "team-a", "uid": "0000-uid", "generation": 1},
            "spec": {
                "models": [{"name": "add", "source": "pvc://models/add", "format": "python"}],
                "runtime": {"modelControlMode": "explicit"},
            },
        }
    )
    pod_spec = build_triton_deployment(md, Settings())["spec"]["template"]["spec"]
    repo = tmp_path / "repo"
    init = run_init_container(
        pod_spec["initContainers"][0], paths={"/models": repo, "/mnt/pvc": tmp_path / "pvc"}
    )
    assert init.returncode == 0, init.stderr
    with run_triton_container(
        pod_spec["containers"][0], paths={"/models": repo}, install=triton_install
    ) as server:
        server.wait_until("ready", 90)
        assert server.http_post("/v2/repository/models/add/unload") == 403
        assert server.http_post("/v2/repository/models/add/load") == 403
        assert server.http_post("/v2/repository/index") == 403
        assert server.http_get("/v2/models/add/ready") == 200  # still served
