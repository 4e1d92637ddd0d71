"""The front with no model server behind it (Triton not up yet, or gone): OpenAI's error body with a
503, never a crash or a bare 500; its health says the same, which keeps the pod out of the Service."""

from __future__ import annotations

import json
from pathlib import Path

from kubeforge.openai import TOKENIZER_CONFIG
from kubeforge.testing.openai_front import running_front
from kubeforge.testing.triton import free_port


def test_requests_get_a_503_in_openais_error_body(tmp_path: Path) -> None:
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / TOKENIZER_CONFIG).write_text(
        json.dumps({"chat_template": "{{ messages[0].content }}"})
    )
    (tmp_path / "plain").mkdir()  # a streaming model that is not a language model: skipped, not fatal
    args = ["--triton", f"http://127.0.0.1:{free_port()}", "--repository", str(tmp_path),
            "--model", "lm", "--model", "plain"]  # fmt: skip
    with running_front(args, tmp_path / "front.log", ready=False) as front:
        status, _ = front.call("/health")
        assert status == 503
        assert json.loads(front.call("/v1/models")[1])["data"][0]["id"] == "lm"
        for path, body in [
            ("/v1/completions", {"model": "lm", "prompt": "x"}),
            ("/v1/chat/completions", {"model": "lm", "messages": [{"role": "user", "content": "x"}]}),
        ]:
            status, raw = front.call(path, body)
            assert status == 503, raw
            error = json.loads(raw)["error"]
            assert error["type"] == "server_error" and "not ready" in error["message"]
    assert "not served through the OpenAI API: model plain" in front.output()
