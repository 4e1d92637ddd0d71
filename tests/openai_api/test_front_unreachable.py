"""The front with no model server behind it (Triton not up yet, or gone): OpenAI's error body with a
503, never a crash or a bare 500; its health says the same, which keeps the pod out of the Service."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from kubeforge.openai import BYTE_TOKENIZER, TOKENIZER_CONFIG, TOKENIZER_KEY
from kubeforge.testing.triton import free_ports


def _request(url: str, body: dict[str, object] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_requests_get_a_503_in_openais_error_body(tmp_path: Path) -> None:
    (tmp_path / "lm").mkdir()
    config = {TOKENIZER_KEY: BYTE_TOKENIZER, "chat_template": "{{ messages[0].content }}"}
    (tmp_path / "lm" / TOKENIZER_CONFIG).write_text(json.dumps(config))
    (tmp_path / "plain").mkdir()  # a streaming model that is not a language model: skipped, not fatal
    port, nobody = free_ports(2)
    argv = [
        sys.executable, "-m", "kubeforge", "openai-front", "--host", "127.0.0.1", "--port", str(port),
        "--triton", f"http://127.0.0.1:{nobody}", "--repository", str(tmp_path), "--model", "lm", "--model", "plain",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _ = _request(f"{url}/health")
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        assert status == 503
        assert json.loads(_request(f"{url}/v1/models")[1])["data"][0]["id"] == "lm"
        for path, body in [
            ("/v1/completions", {"model": "lm", "prompt": "x"}),
            ("/v1/chat/completions", {"model": "lm", "messages": [{"role": "user", "content": "x"}]}),
        ]:
            status, raw = _request(f"{url}{path}", body)
            assert status == 503, raw
            error = json.loads(raw)["error"]
            assert error["type"] == "server_error" and "not ready" in error["message"]
    finally:
        process.terminate()
        output = process.communicate(timeout=10)[0].decode()
    assert "not served through the OpenAI API: model plain" in output
