"""model_states: what the status code reads from a Triton server, and that it never raises."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kubeforge.api.modeldeployment import ModelState
from kubeforge.testing.triton import TritonInstall, TritonStartError, free_port, run_tritonserver
from kubeforge.triton.client import TritonObservation, model_state, model_states
from kubeforge.triton.repository import assemble_repository, parse_plan, repository_plan

from .models import add_model_spec, write_add_model


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"name": "a", "version": "1", "state": "READY"}, ModelState(name="a", version="1", state="READY")),
        (
            {"name": "a", "version": "2", "state": "UNAVAILABLE", "reason": "boom"},
            ModelState(name="a", version="2", state="UNAVAILABLE", reason="boom"),
        ),
        ({"name": "b", "reason": ""}, ModelState(name="b", state="Unknown")),  # explicit mode, never loaded
    ],
)
def test_model_state_from_an_index_entry(entry: dict[str, Any], expected: ModelState) -> None:
    assert model_state(entry) == expected


def test_closed_port_is_unreachable_not_an_exception() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    observed = asyncio.run(model_states(url, timeout=2.0))
    assert (observed.url, observed.reachable, observed.ready, observed.models) == (url, False, False, ())
    assert observed.error is not None and "Cannot connect" in observed.error


def test_silent_server_times_out() -> None:
    with socket.socket() as listener:  # accepts connections (the kernel does) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        observed = asyncio.run(model_states(f"127.0.0.1:{listener.getsockname()[1]}", timeout=0.3))
    assert (observed.reachable, observed.error) == (False, "TimeoutError")


class _NotTriton(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        body = b"<html>a proxy page</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def not_triton() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotTriton)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_is_not_triton_is_reported(not_triton: str) -> None:
    observed = asyncio.run(model_states(not_triton, timeout=2.0))
    assert observed.reachable and observed.models == ()
    assert observed.error is not None and observed.error.startswith("repository index: ")


def test_model_lookup() -> None:
    observed = TritonObservation(
        "u",
        reachable=True,
        models=(
            ModelState(name="a", version="1", state="READY"),
            ModelState(name="a", version="2", state="LOADING"),
        ),
    )
    assert observed.model("a") == ModelState(name="a", version="2", state="LOADING")
    assert observed.model("b") is None


@pytest.fixture
def failing_repository(tmp_path: Path) -> Path:
    """A repository with a model that loads and one whose initialize raises."""
    pvc = tmp_path / "pvc"
    write_add_model(pvc / "models" / "add")
    specs = [
        add_model_spec("good", "pvc://models/add"),
        add_model_spec("bad", "pvc://models/add", fail_to_load="yes"),
    ]
    out = tmp_path / "models"
    assert assemble_repository(parse_plan(repository_plan(specs)), out, pvc, {}) == []
    return out


@pytest.mark.triton
def test_a_model_that_fails_to_load(triton_install: TritonInstall, failing_repository: Path) -> None:
    args = ["--model-control-mode=none", "--strict-readiness=true"]
    # what the operator's pods run (--exit-on-error=true): the server exits, the pod restarts
    with (
        pytest.raises(TritonStartError, match="exited with code") as failure,
        run_tritonserver(
            [*args, "--exit-on-error=true"], repository=failing_repository, install=triton_install
        ),
    ):
        pass
    assert "this model refuses to load" in failure.value.log

    # with --exit-on-error=false it serves the rest, not ready, and the index says why
    with run_tritonserver(
        [*args, "--exit-on-error=false"], repository=failing_repository, install=triton_install
    ) as server:
        assert server.http_get("/v2/health/ready") == 400
        observed = asyncio.run(model_states(server.http_url, timeout=5.0))
    assert (observed.reachable, observed.ready, observed.error) == (True, False, None)
    assert [(m.name, m.state) for m in observed.models] == [("bad", "UNAVAILABLE"), ("good", "READY")]
    bad = observed.model("bad")
    assert bad is not None and bad.reason is not None and "this model refuses to load" in bad.reason
    assert "this model refuses to load" in server.log()  # the log is kept after the server stopped
