"""Credentials in URLs: refused in the spec, masked in any text, out of every log line."""

from __future__ import annotations

import logging

import pytest
from pydantic import ValidationError

from kubeforge.api import ModelDeployment, TrainingJob
from kubeforge.controllers.invalid import describe
from kubeforge.redact import RedactingFilter, credential_in_url, redact

# held out: each carries the secret string "s3cr3t"
CREDENTIAL_SOURCES = [
    "https://user:s3cr3t@models.example/m.tgz",
    "https://s3cr3t@models.example/m.tgz",
    "https://bucket.s3.amazonaws.com/m.tgz?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=s3cr3t",
    "https://acct.blob.core.windows.net/c/m.tgz?sv=2021&sig=s3cr3t",
    "https://models.example/m.tgz?token=s3cr3t",
    "https://models.example/m.tgz?a=1&access_token=s3cr3t",
    "https://storage.googleapis.com/b/m.tgz?X-Goog-Signature=s3cr3t",
]
PLAIN_SOURCES = [
    "https://models.example/m.tgz",
    "https://models.example/m.tgz?version=3&tokenizer=bpe",
    "s3://bucket/models/m",
    "hf://org/model@main",
    "pvc://models/m",
]


@pytest.mark.parametrize("url", CREDENTIAL_SOURCES)
def test_credentials_are_found_and_masked(url: str) -> None:
    assert credential_in_url(url) is not None
    masked = redact(f"download of {url} failed")
    assert "s3cr3t" not in masked
    assert (
        "models.example" in masked or "windows.net" in masked or "amazonaws" in masked or "google" in masked
    )


@pytest.mark.parametrize("url", PLAIN_SOURCES)
def test_plain_urls_are_left_alone(url: str) -> None:
    assert credential_in_url(url) is None
    assert redact(f"fetching {url}") == f"fetching {url}"


def _md(source: str, adapter: bool = False) -> dict[str, object]:
    model: dict[str, object] = {"name": "m", "format": "onnx", "source": source}
    if adapter:
        model = {
            "name": "m",
            "format": "vllm",
            "source": "hf://org/model",
            "llm": {"loraAdapters": [{"name": "a", "source": source}]},
        }
    return {
        "apiVersion": "kubeforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "a", "namespace": "n"},
        "spec": {"models": [model], "gpu": {"count": 1}},
    }


@pytest.mark.parametrize("url", CREDENTIAL_SOURCES)
@pytest.mark.parametrize("where", ["model", "adapter", "output"])
def test_a_spec_with_a_credential_in_a_url_is_refused_without_repeating_it(url: str, where: str) -> None:
    with pytest.raises(ValidationError) as info:
        if where == "output":
            TrainingJob.model_validate(
                {
                    "apiVersion": "kubeforge.io/v1alpha1",
                    "kind": "TrainingJob",
                    "metadata": {"name": "t", "namespace": "n"},
                    "spec": {"image": "t:1", "output": {"uri": url, "modelName": "m"}},
                }
            )
        else:
            ModelDeployment.model_validate(_md(url, adapter=where == "adapter"))
    message = describe(info.value)
    assert "a credential in the URL is refused" in message
    assert "s3cr3t" not in message
    if where != "output":
        assert "storage.secretName" in message


def test_every_log_line_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("kubeforge.test")
    handler = logging.StreamHandler()
    handler.addFilter(RedactingFilter())
    caplog.handler.addFilter(RedactingFilter())
    try:
        logger.warning("download of %s failed", CREDENTIAL_SOURCES[0])
        try:
            raise RuntimeError(f"cannot open {CREDENTIAL_SOURCES[4]}")
        except RuntimeError:
            logger.exception("fetch failed")
    finally:
        caplog.handler.removeFilter(caplog.handler.filters[-1])
    assert "s3cr3t" not in caplog.text
    assert "https://***@models.example/m.tgz" in caplog.text
    assert "token=***" in caplog.text
