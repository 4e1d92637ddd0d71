"""Fixtures of the Triton tests: the local tritonserver, a loopback file server, a loopback S3."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kubeforge.testing.triton import TritonInstall, find_tritonserver, free_port
from tests.harness import TRITONSERVER, import_part, require


@pytest.fixture(scope="session")
def triton_install() -> TritonInstall:
    """The wheel's tritonserver, ready to run; fails, saying how to install it, where it is missing."""
    require(TRITONSERVER)
    return find_tritonserver()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output for the test


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving root; yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def file_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, folder): an HTTP server on 127.0.0.1 serving the folder."""
    root = tmp_path_factory.mktemp("www")
    with serve_directory(root) as base:
        yield base, root


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """An S3-compatible server (moto) on 127.0.0.1; fails where moto[server] (dev extra) is missing."""
    moto_server = import_part("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def bucket(s3_endpoint: str) -> Any:
    """A fresh bucket on the moto server, as a boto3 Bucket resource."""
    boto3 = import_part("boto3")
    s3 = boto3.resource(
        "s3",
        endpoint_url=s3_endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return s3.create_bucket(Bucket=f"models-{dt.datetime.now().strftime('%H%M%S%f')}")
