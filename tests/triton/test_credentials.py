"""An https source's credential comes from the storage Secret (as the kubelet gives it: envFrom with
the prefix) as a header, reaches the source's own URL only (never a redirect elsewhere), and no log
line or error message of the fetching containers carries it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubeforge.triton.repository import PLAN_ENV, repository_plan
from kubeforge.triton.sources import SourceError, http_headers

from .models import add_model_spec, double_model_archive

TOKEN = "Bearer tok-9f8e7d6c5b4a"


@contextmanager
def _server(
    host: str, answer: dict[str, tuple[int, dict[str, str], bytes]]
) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A loopback HTTP server: path -> (status, headers, body) where the request carries TOKEN,
    401 where it does not; records every request's headers."""
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
            status, headers, body = answer.get(self.path.split("?")[0], (404, {}, b""))
            if status == 200 and self.headers.get("Authorization") != TOKEN:
                status, headers, body = 401, {}, b""
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer((host, 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def _assemble(tmp_path: Path, source: str, secret: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The init container's own command, with the Secret's keys as envFrom gives them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEFORGE_STORAGE_")}
    env |= {f"KUBEFORGE_STORAGE_{k}": v for k, v in secret.items()}
    env[PLAN_ENV] = repository_plan([add_model_spec("double", source)])
    out = tmp_path / "models"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "kubeforge",
            "assemble-repository",
            "--out",
            str(out),
            "--pvc-root",
            str(tmp_path),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_secret_s_authorization_header_fetches_the_model(tmp_path: Path) -> None:
    archive = double_model_archive()
    with _server("127.0.0.1", {"/m.tgz": (200, {}, archive)}) as (base, seen):
        done = _assemble(tmp_path, f"{base}/m.tgz", {"HTTP_AUTHORIZATION": TOKEN})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "models" / "double" / "config.pbtxt").is_file()
    assert seen[0]["authorization"] == TOKEN
    assert "tok-9f8e7d6c5b4a" not in done.stdout + done.stderr


def test_a_wrong_credential_fails_without_showing_it(tmp_path: Path) -> None:
    with _server("127.0.0.1", {"/m.tgz": (200, {}, double_model_archive())}) as (base, _):
        done = _assemble(tmp_path, f"{base}/m.tgz", {"HTTP_AUTHORIZATION": "Bearer wrong-5e4d3c"})
    assert done.returncode == 1
    assert "HTTP 401" in done.stdout + done.stderr
    assert "wrong-5e4d3c" not in done.stdout + done.stderr


def test_a_redirect_to_another_host_does_not_carry_the_credential(tmp_path: Path) -> None:
    # a presigned URL on another host (127.0.0.2 is loopback too): it must not get the Secret's header
    signed = "/m.tgz?X-Amz-Signature=sig-0a1b2c3d&X-Amz-Credential=cred-4e5f"
    with _server("127.0.0.2", {"/m.tgz": (200, {}, double_model_archive())}) as (other, elsewhere):
        redirect = {"/m.tgz": (302, {"Location": f"{other}{signed}"}, b"")}
        with _server("127.0.0.1", redirect) as (base, seen):
            done = _assemble(tmp_path, f"{base}/m.tgz", {"HTTP_AUTHORIZATION": TOKEN})
    assert seen[0]["authorization"] == TOKEN
    assert elsewhere and "authorization" not in elsewhere[0]
    # the other host refused it (no header): the failure names the redirect with its signature masked
    assert done.returncode == 1
    output = done.stdout + done.stderr
    assert "tok-9f8e7d6c5b4a" not in output and "sig-0a1b2c3d" not in output


def test_more_headers_come_as_a_json_object() -> None:
    headers = http_headers({"HTTP_HEADERS": '{"X-Api-Key": "k-1"}', "HTTP_AUTHORIZATION": TOKEN})
    assert headers == {"X-Api-Key": "k-1", "Authorization": TOKEN}
    with pytest.raises(SourceError, match="HTTP_HEADERS must be a JSON object") as info:
        http_headers({"HTTP_HEADERS": "X-Api-Key: k-2"})
    assert "k-2" not in str(info.value)
