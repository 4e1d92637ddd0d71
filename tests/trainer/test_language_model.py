"""The byte-level language model: cached generation computes what the full forward computes, the
TorchScript copy computes what the module computes, and the corpus splits without leaking."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubeforge.trainer.__main__ import EXIT_USAGE
from kubeforge.trainer.__main__ import main as trainer_main
from kubeforge.trainer.language_model import ByteTransformer, LanguageModel
from kubeforge.trainer.models import build_model
from kubeforge.trainer.text_data import (
    DEFAULT_CORPUS,
    VALIDATION_FRACTION,
    corpus_datasets,
    read_corpus,
    windows,
)

pytestmark = pytest.mark.torch

ATOL = 1e-5  # float32 sums taken in another order (one position vs all at once)


@pytest.fixture(scope="module")
def model() -> ByteTransformer:
    torch.manual_seed(0)
    return ByteTransformer(context_length=32).eval()


def _tokens(length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (1, length), generator=torch.Generator().manual_seed(seed))


def test_loadable_by_name_as_a_language_model() -> None:
    model = build_model("kubeforge.trainer.language_model:ByteTransformer")
    assert isinstance(model, ByteTransformer) and isinstance(model, LanguageModel)
    assert (model.vocab_size, model.context_length) == (256, 128)
    assert model(torch.zeros(2, 5, dtype=torch.int64)).shape == (2, 5, 256)


def test_the_future_does_not_leak_into_the_past(model: ByteTransformer) -> None:
    tokens = _tokens(20, 1)
    changed = tokens.clone()
    changed[0, 15:] = (changed[0, 15:] + 1) % 256
    with torch.no_grad():
        torch.testing.assert_close(model(tokens)[0, :15], model(changed)[0, :15], rtol=0, atol=0)
        assert not torch.allclose(model(tokens)[0, 15:], model(changed)[0, 15:])


@pytest.mark.parametrize("scripted", [False, True], ids=["eager", "torchscript"])
def test_cached_generation_matches_the_full_forward(model: ByteTransformer, scripted: bool) -> None:
    runner = torch.jit.script(model) if scripted else model
    first, second = _tokens(24, 2), _tokens(9, 3)
    with torch.no_grad():
        expected_first, expected_second = model(first)[0], model(second)[0]
        k, v = runner.new_cache(4)
        # two prompts in two slots of one cache, then one byte at a time for both in one batch,
        # each at its own position
        prompt = runner.forward_cached(first[:, :16], torch.tensor([2]), torch.arange(16).unsqueeze(0), k, v)
        torch.testing.assert_close(prompt[0], expected_first[15], rtol=0, atol=ATOL)
        runner.forward_cached(second[:, :1], torch.tensor([0]), torch.zeros(1, 1, dtype=torch.int64), k, v)
        for step in range(8):
            at_first, at_second = 16 + step, 1 + step
            logits = runner.forward_cached(
                torch.tensor([[first[0, at_first]], [second[0, at_second]]]),
                torch.tensor([2, 0]),
                torch.tensor([[at_first], [at_second]]),
                k,
                v,
            )
            torch.testing.assert_close(logits[0], expected_first[at_first], rtol=0, atol=ATOL)
            torch.testing.assert_close(logits[1], expected_second[at_second], rtol=0, atol=ATOL)


def test_torchscript_keeps_what_serving_reads(model: ByteTransformer) -> None:
    scripted = torch.jit.script(model)
    assert (scripted.context_length, scripted.vocab_size) == (32, 256)
    k, v = scripted.new_cache(3)
    assert k.shape == v.shape == (2, 3, 32, 4, 16)  # layers, slots, context, heads, head_dim


def test_corpus_is_shipped_and_split_by_position() -> None:
    tokens = read_corpus(DEFAULT_CORPUS)
    assert 200_000 < tokens.numel() < 300_000  # a few hundred KB, as the README beside it says
    training, validation = corpus_datasets(tokens, 64)
    split = int(tokens.numel() * (1 - VALIDATION_FRACTION))
    inputs, targets = training.tensors
    # targets are the inputs shifted by one byte; training windows stay before the split
    torch.testing.assert_close(inputs[0, 1:], targets[0, :-1])
    assert torch.equal(targets[-1], tokens[32 * (len(training) - 1) + 1 : 32 * (len(training) - 1) + 65])
    assert 32 * (len(training) - 1) + 65 <= split
    assert torch.equal(validation.tensors[0][0], tokens[split : split + 64])
    assert len(validation) == (tokens.numel() - split - 1) // 64


def test_windows_refuse_a_text_shorter_than_one() -> None:
    with pytest.raises(ValueError, match="no window"):
        windows(torch.arange(10), 10, 5)


@pytest.mark.parametrize(
    ("model", "export_format"),
    [
        ("kubeforge.trainer.language_model:ByteTransformer", "python"),
        ("kubeforge.trainer.models:MLP", "python-llm"),
    ],
)
def test_an_export_format_that_does_not_fit_the_model_is_refused_before_training(
    model: str, export_format: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["--model", model, "--steps", "1", "--output-uri", str(tmp_path), "--export-format", export_format]
    assert trainer_main(argv) == EXIT_USAGE
    assert f"export it as {'python-llm' if export_format == 'python' else 'python or pytorch'}" in caplog.text
    assert not any(tmp_path.iterdir())
