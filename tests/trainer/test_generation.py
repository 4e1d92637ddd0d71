"""The generation engine the streaming Triton model runs, in-process: sampling, stop sequences,
UTF-8, continuous batching, cancellation, the sliding window, and the request parameters."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from kubeforge.trainer.generation import Engine, FinishReason, SamplingParams, TextStream, sample
from kubeforge.trainer.language_model import ByteTransformer
from kubeforge.trainer.triton_llm_model import ResponseStream, sampling_params

pytestmark = pytest.mark.torch


@dataclass
class Recorder:
    """A request's stream as the engine sees it; `cancel` plays the client going away."""

    texts: list[str] = field(default_factory=list)
    finish: str | None = None
    error: str | None = None
    cancel: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def send(self, text: str, finish_reason: str | None) -> None:
        assert self.finish is None, "nothing is sent after the last response"
        self.texts.append(text)
        if finish_reason is not None:
            self.finish = finish_reason
            self.done.set()

    def fail(self, message: str) -> None:
        self.error = message
        self.done.set()

    def cancelled(self) -> bool:
        return self.cancel

    @property
    def text(self) -> str:
        return "".join(self.texts)


@dataclass
class Counts:
    """The engine's observer, counting."""

    generated: int = 0
    passes: int = 0
    first_tokens: list[float] = field(default_factory=list)
    active_counts: list[int] = field(default_factory=list)

    def first_token(self, seconds: float) -> None:
        self.first_tokens.append(seconds)

    def tokens(self, count: int) -> None:
        self.generated += count

    def forward_pass(self, sequences: int) -> None:
        self.passes += 1

    def active(self, count: int) -> None:
        self.active_counts.append(count)


class Alphabet:
    """A fake model whose most likely next byte is the letter after the last one (a, b, ..., j, a, ...)."""

    context_length = 16

    def new_cache(self, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(slots), torch.zeros(slots)

    def forward_cached(
        self,
        tokens: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
    ) -> torch.Tensor:
        logits = torch.zeros(tokens.shape[0], 256)
        following = (tokens[:, -1] - ord("a") + 1) % 10 + ord("a")
        logits[torch.arange(tokens.shape[0]), following] = 10.0
        return logits


@pytest.fixture(scope="module")
def model() -> ByteTransformer:
    torch.manual_seed(0)
    return ByteTransformer(context_length=16).eval()


def run_until_done(engine: Engine, *recorders: Recorder, limit: int = 1000) -> None:
    with torch.no_grad():
        for _ in range(limit):
            if all(r.finish or r.error for r in recorders):
                return
            engine.step()
    raise AssertionError("requests did not finish")


def generate(engine: Engine, prompt: bytes, **params: Any) -> Recorder:
    recorder = Recorder()
    engine.submit(prompt, SamplingParams(**params), recorder)
    run_until_done(engine, recorder)
    return recorder


# ------------------------------------------------------------------------------------------------
# sampling


def test_greedy_and_narrow_cuts_pick_the_most_likely_byte() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    for seed in range(20):
        generator = torch.Generator().manual_seed(seed)
        assert sample(logits, SamplingParams(temperature=0), generator) == 1
        assert sample(logits, SamplingParams(top_k=1), generator) == 1
        assert sample(logits, SamplingParams(top_p=0.01), generator) == 1


def test_top_k_and_top_p_keep_only_their_candidates() -> None:
    logits = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    generator = torch.Generator().manual_seed(1)
    top2 = {sample(logits, SamplingParams(top_k=2), generator) for _ in range(200)}
    assert top2 == {0, 1}
    # softmax: 0.64, 0.23, 0.09, ...: the first two reach 0.8, so nothing past them is drawn
    nucleus = {sample(logits, SamplingParams(top_p=0.8), generator) for _ in range(300)}
    assert nucleus == {0, 1}
    hot = {sample(logits, SamplingParams(temperature=5.0), generator) for _ in range(300)}
    assert hot == set(range(6))  # a high temperature flattens the distribution


def test_the_same_seed_draws_the_same_bytes() -> None:
    logits = torch.zeros(256)

    def draws(seed: int) -> list[int]:
        generator = torch.Generator().manual_seed(seed)
        return [sample(logits, SamplingParams(), generator) for _ in range(16)]

    assert draws(3) == draws(3)
    assert draws(3) != draws(4)


# ------------------------------------------------------------------------------------------------
# text: UTF-8 and stop sequences


def push_all(stream: TextStream, data: bytes) -> tuple[list[str], bool]:
    texts = []
    for byte in data:
        text, stopped = stream.push(byte)
        texts.append(text)
        if stopped:
            return texts, True
    return texts, False


def test_a_stop_sequence_ends_the_text_and_is_not_sent() -> None:
    texts, stopped = push_all(TextStream((b"END",)), b"abEN-xENDyz")
    assert stopped
    assert "".join(texts) == "abEN-x"
    # "E", "N" were held back until "-" showed they were no stop; one response per byte all along
    assert texts[:5] == ["a", "b", "", "", "EN-"]
    assert len(texts) == len(b"abEN-xEND")


def test_the_longest_possible_stop_prefix_is_held_back() -> None:
    stream = TextStream((b"aab", b"xy"))
    texts, stopped = push_all(stream, b"aaaxx")
    assert not stopped
    # "aa" could start "aab" and "x" could start "xy": each is held until the next byte rules it out
    assert texts == ["", "", "a", "aa", "x"]
    assert stream.flush() == "x"


def test_multibyte_characters_come_out_whole() -> None:
    stream = TextStream()
    texts, _ = push_all(stream, "é✓".encode())
    assert texts == ["", "é", "", "", "✓"]
    stream.push("✓".encode()[0])
    assert stream.flush() == "\ufffd"  # an unfinished character at the end of the stream


# ------------------------------------------------------------------------------------------------
# the engine


def test_max_tokens_is_honoured_one_response_per_byte(model: ByteTransformer) -> None:
    recorder = generate(Engine(model, 2), b"Light", max_tokens=7, seed=1)
    assert len(recorder.texts) == 7
    assert recorder.finish == FinishReason.LENGTH


def test_the_same_seed_gives_the_same_text(model: ByteTransformer) -> None:
    engine = Engine(model, 2)
    first = generate(engine, b"Light", max_tokens=24, seed=5)
    again = generate(engine, b"Light", max_tokens=24, seed=5)
    other = generate(engine, b"Light", max_tokens=24, seed=6)
    assert first.texts == again.texts
    assert first.text != other.text


def test_a_stop_sequence_ends_generation() -> None:
    engine = Engine(Alphabet(), 2)
    assert generate(engine, b"a", max_tokens=12, temperature=0).text == "bcdefghijabc"
    stopped = generate(engine, b"a", max_tokens=12, temperature=0, stop=(b"fx", b"efg"))
    assert stopped.finish == FinishReason.STOP
    assert stopped.texts == ["b", "c", "d", "", "", ""]  # "e", "ef" might have been the stop


def test_concurrent_requests_share_forward_passes() -> None:
    torch.manual_seed(0)
    model = ByteTransformer(context_length=64).eval()
    counts = Counts()
    engine = Engine(model, 4, counts)
    recorders = [Recorder() for _ in range(4)]
    for index, recorder in enumerate(recorders):
        engine.submit(b"Light" * (index + 1), SamplingParams(max_tokens=10, seed=index), recorder)
    run_until_done(engine, *recorders)
    assert all(len(r.texts) == 10 and r.finish == FinishReason.LENGTH for r in recorders)
    assert counts.generated == 40
    # one pass per prompt, then 9 passes that each advance all four
    assert counts.passes == 4 + 9
    assert len(counts.first_tokens) == 4
    assert counts.active_counts[-1] == 0


def test_a_cancelled_request_frees_its_slot_within_a_step() -> None:
    engine = Engine(Alphabet(), 1)  # one slot: the second request waits for it
    long, waiting = Recorder(), Recorder()
    # greedy: the fake model's next byte is only ~99% likely, and the test reads the waiting text
    engine.submit(b"a", SamplingParams(max_tokens=1000, temperature=0), long)
    engine.submit(b"a", SamplingParams(max_tokens=3, temperature=0), waiting)
    for _ in range(5):
        engine.step()
    assert len(long.texts) == 6 and not waiting.texts  # the first step: the prompt's byte and one more
    long.cancel = True
    engine.step()
    assert long.finish == FinishReason.CANCELLED
    assert long.texts[-1] == ""  # the last "response" is only the final flag
    assert waiting.texts == ["b", "c"]  # admitted in that same step, and advanced with it
    run_until_done(engine, waiting)
    assert waiting.text == "bcd"
    assert engine.free_slots == [0]


def test_generation_continues_past_the_context_window(model: ByteTransformer) -> None:
    counts = Counts()
    recorder = Recorder()
    engine = Engine(model, 1, counts)
    engine.submit(b"x" * 100, SamplingParams(max_tokens=40, seed=0), recorder)  # a prompt longer than 16
    run_until_done(engine, recorder)
    assert len(recorder.texts) == 40 and recorder.finish == FinishReason.LENGTH
    # the window is 12 bytes: the prompt pass, then a new prompt pass every 4 bytes
    assert counts.passes == 40


def test_the_engine_thread_serves_and_stops(model: ByteTransformer) -> None:
    engine = Engine(model, 2)
    engine.start()
    try:
        recorder = Recorder()
        engine.submit(b"", SamplingParams(max_tokens=5), recorder)  # an empty prompt starts from a newline
        assert recorder.done.wait(30)
        assert recorder.finish == FinishReason.LENGTH
        unfinished = Recorder()
        engine.submit(b"a", SamplingParams(max_tokens=4096), unfinished)
    finally:
        engine.stop()
    assert engine.thread is not None and not engine.thread.is_alive()
    assert unfinished.error == "the model is being unloaded" or unfinished.finish is not None


# ------------------------------------------------------------------------------------------------
# request values -> sampling parameters (model.py)


def test_request_values_become_sampling_parameters() -> None:
    params, streaming = sampling_params({}, 4096)
    assert params == SamplingParams() and streaming
    params, streaming = sampling_params(
        {
            "max_tokens": 8,
            "temperature": 0.5,
            "top_k": 3,
            "top_p": 0.9,
            "seed": 7,
            "stop": [b"\n\n", "é"],
            "stream": False,
        },
        4096,
    )
    assert params == SamplingParams(8, 0.5, 3, 0.9, 7, (b"\n\n", "é".encode()))
    assert not streaming
    assert sampling_params({"stop": "END"}, 10)[0] == SamplingParams(max_tokens=10, stop=(b"END",))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 101}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -2}, "top_k"),
        ({"stop": [""]}, "stop"),
        ({"seed": "soon"}, "bad parameter"),
        ({"max_token": 5}, "unknown parameters"),
    ],
)
def test_bad_request_values_are_refused_with_their_name(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sampling_params(values, 100)


class FakeSender:
    """A decoupled response sender: records (response, flags); can refuse to send or report cancellation."""

    def __init__(self, refuse: bool = False) -> None:
        self.sent: list[tuple[Any, int]] = []
        self.refuse = refuse
        self.asked = 0

    def send(self, response: Any = None, flags: int = 0) -> None:
        if self.refuse:
            raise RuntimeError("Response sender has been closed")
        self.sent.append((response, flags))

    def is_cancelled(self) -> bool:
        self.asked += 1
        return False


FINAL = 1
PB_UTILS = SimpleNamespace(
    TRITONSERVER_RESPONSE_COMPLETE_FINAL=FINAL,
    InferenceResponse=lambda output_tensors=None, error=None: {"outputs": output_tensors, "error": error},
    Tensor=lambda name, array: (name, array.tolist()),
    TritonError=str,
)


def test_responses_stream_one_per_byte_or_come_whole() -> None:
    streaming = FakeSender()
    stream = ResponseStream(streaming, PB_UTILS, streaming=True)
    stream.send("a", None)
    stream.send("b", FinishReason.LENGTH)
    assert [(r["outputs"], flags) for r, flags in streaming.sent] == [
        ([("text_output", [b"a"]), ("finish_reason", [b""])], 0),
        ([("text_output", [b"b"]), ("finish_reason", [b"length"])], FINAL),
    ]
    whole = FakeSender()
    stream = ResponseStream(whole, PB_UTILS, streaming=False)
    for text in ("a", "b", "c"):
        stream.send(text, None)
    stream.send("d", FinishReason.STOP)
    assert [(r["outputs"], flags) for r, flags in whole.sent] == [
        ([("text_output", [b"abcd"]), ("finish_reason", [b"stop"])], FINAL)
    ]


def test_a_cancelled_request_gets_only_the_final_flag() -> None:
    sender = FakeSender()
    ResponseStream(sender, PB_UTILS, streaming=True).send("", FinishReason.CANCELLED)
    assert sender.sent == [(None, FINAL)]


def test_a_gone_client_reads_as_cancelled_and_the_server_is_asked_sparingly() -> None:
    gone = ResponseStream(FakeSender(refuse=True), PB_UTILS, streaming=True)
    assert not gone.cancelled()
    gone.send("a", None)  # the client closed the connection: sending fails
    assert gone.cancelled()
    sender = FakeSender()
    stream = ResponseStream(sender, PB_UTILS, streaming=True)
    for _ in range(50):
        assert not stream.cancelled()
    assert sender.asked == 1  # one round trip to the server per 20 ms, not one per step
