"""Token generation for the exported language model: sampling, stop sequences, and a batching scheduler.

The exporter copies this file verbatim next to the Triton model's ``model.py``
(``triton_llm_model``), so it stands alone: standard library and torch only, no Triton, no kubeforge.
It is the part of serving that tests can run in-process.

How requests are served (continuous batching, as vLLM and TensorRT-LLM do): the ``Engine`` runs one
loop on its own thread with up to ``max_streams`` sequences in flight, each holding a row ("slot")
of one shared key/value cache. Every iteration it drops the sequences whose client cancelled,
admits waiting requests into free slots (one forward pass over each new prompt: its first token),
then advances every running sequence by one byte in a single batched forward pass. So a new request
waits for at most one step, never for another request to finish, and a cancelled one frees its
slot for a waiting request within a step.

Text is bytes: a byte is a token, and a response carries the text its byte completed. A byte that
only starts a UTF-8 character, or that may be the start of a stop sequence, is held back until it
is known to be text (then that response is empty); a stop sequence ends the stream and is never sent.
"""

from __future__ import annotations

import codecs
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

log = logging.getLogger(__name__)

DEFAULT_MAX_TOKENS = 64
NEWLINE = 10  # the prompt of an empty prompt: the model always needs a byte to continue from


class FinishReason:
    """Why a stream ended (the last response's ``finish_reason``)."""

    LENGTH = "length"  # max_tokens generated
    STOP = "stop"  # a stop sequence was generated
    CANCELLED = "cancelled"  # the client went away or cancelled the request


@dataclass(frozen=True)
class SamplingParams:
    """How one request wants its bytes chosen; validated by ``checked``."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0  # 0: always the most likely byte (greedy)
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1: no nucleus cut
    seed: int | None = None  # None: a fresh random seed; the same seed gives the same text
    stop: tuple[bytes, ...] = ()

    def checked(self, max_tokens_limit: int) -> SamplingParams:
        """Itself when valid; ``ValueError`` saying which field is wrong otherwise."""
        if not 1 <= self.max_tokens <= max_tokens_limit:
            raise ValueError(f"max_tokens must be in [1, {max_tokens_limit}], got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if any(not s for s in self.stop):
            raise ValueError("stop sequences must not be empty")
        return self


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """The next byte from ``logits`` ``(vocab,)``: greedy at temperature 0, else temperature, top-k, top-p."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    scores = logits.double() / params.temperature
    if 0 < params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1:
        ordered, order = torch.sort(scores, descending=True)
        probabilities = torch.softmax(ordered, dim=0)
        # drop a byte once the more likely ones already reach top_p (the most likely one always stays)
        outside = probabilities.cumsum(0) - probabilities >= params.top_p
        scores = scores.scatter(0, order, ordered.masked_fill(outside, float("-inf")))
    return int(torch.multinomial(torch.softmax(scores, dim=0), 1, generator=generator))


class TextStream:
    """Bytes in, text out: holds back an incomplete UTF-8 character and a possible start of a stop sequence."""

    def __init__(self, stop: tuple[bytes, ...] = ()) -> None:
        self.stop = stop
        self.pending = b""
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> tuple[str, bool]:
        """The text this byte releases, and whether it completed a stop sequence (whose text is dropped)."""
        self.pending += bytes((token,))
        for sequence in self.stop:
            # only the held-back tail can hold a match: it is the longest suffix that starts a stop sequence
            at = self.pending.find(sequence)
            if at >= 0:
                text = self.decoder.decode(self.pending[:at], final=True)
                self.pending = b""
                return text, True
        held = self._held_back()
        released, self.pending = (
            self.pending[: len(self.pending) - held],
            self.pending[len(self.pending) - held :],
        )
        return self.decoder.decode(released), False

    def flush(self) -> str:
        """Everything still held back, as text (an incomplete character becomes U+FFFD)."""
        text = self.decoder.decode(self.pending, final=True)
        self.pending = b""
        return text

    def _held_back(self) -> int:
        """Length of the longest suffix of ``pending`` that is a proper prefix of a stop sequence."""
        longest = 0
        for sequence in self.stop:
            for length in range(min(len(sequence) - 1, len(self.pending)), longest, -1):
                if self.pending.endswith(sequence[:length]):
                    longest = length
                    break
        return longest


class Stream(Protocol):
    """Where one request's output goes: the Triton adapter turns it into responses; tests record it."""

    def send(self, text: str, finish_reason: str | None) -> None:
        """One generated byte's text; ``finish_reason`` is set on the last call only."""

    def fail(self, message: str) -> None:
        """The request ended with an error (the last call)."""

    def cancelled(self) -> bool:
        """Whether the client gave up on this request."""


class Observer(Protocol):
    """What the engine reports for metrics (the Triton adapter keeps Triton custom metrics)."""

    def first_token(self, seconds: float) -> None:
        """A request's first byte was sent this long after it was submitted."""

    def tokens(self, count: int) -> None:
        """``count`` more bytes were generated."""

    def forward_pass(self, sequences: int) -> None:
        """One forward pass advanced ``sequences`` sequences (a prompt counts as one)."""

    def active(self, count: int) -> None:
        """``count`` sequences are in flight (waiting ones included)."""


class NullObserver:
    """An observer that keeps nothing."""

    def first_token(self, seconds: float) -> None:
        pass

    def tokens(self, count: int) -> None:
        pass

    def forward_pass(self, sequences: int) -> None:
        pass

    def active(self, count: int) -> None:
        pass


class CachedLanguageModel(Protocol):
    """The exported model's interface (``language_model.ByteTransformer``, scripted or not)."""

    context_length: int

    def new_cache(self, slots: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward_cached(
        self,
        tokens: torch.Tensor,
        slots: torch.Tensor,
        positions: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
    ) -> torch.Tensor: ...


@dataclass
class Sequence:
    """One request in flight."""

    prompt: list[int]
    params: SamplingParams
    stream: Stream
    submitted: float
    generator: torch.Generator
    text: TextStream
    slot: int = -1
    # the bytes of the window the cache holds, then the next input
    tokens: list[int] = field(default_factory=list)
    cached: int = 0  # positions of the slot's cache that hold this sequence's keys and values
    generated: int = 0


class Engine:
    """The scheduler: continuous batching of up to ``max_streams`` sequences over one model instance.

    ``submit`` is called from Triton's thread; everything else runs on the engine's own thread
    (``start``), the only one that touches the model and the cache.
    """

    def __init__(
        self,
        model: CachedLanguageModel,
        max_streams: int,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.context_length = int(model.context_length)
        # when a sequence outgrows the context, it continues from its last three quarters (one prompt pass)
        self.window = self.context_length - self.context_length // 4
        self.observer: Observer = observer or NullObserver()
        self.clock = clock
        with torch.no_grad():
            self.k_cache, self.v_cache = model.new_cache(max_streams)
        # inputs go where the model is (a GPU instance's model.py moves it there); sampling stays on the
        # CPU, where each request's seeded generator lives
        self.device = self.k_cache.device
        self.free_slots = list(range(max_streams - 1, -1, -1))
        self.waiting: queue.Queue[Sequence | None] = queue.Queue()
        self.running: list[Sequence] = []
        self.stopped = False
        self.thread: threading.Thread | None = None

    def submit(self, prompt: bytes, params: SamplingParams, stream: Stream) -> None:
        """Queue a request; its bytes go to ``stream`` as they are generated."""
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        tokens = list(prompt[-self.window :]) or [NEWLINE]
        self.waiting.put(
            Sequence(
                tokens,
                params,
                stream,
                self.clock(),
                torch.Generator().manual_seed(seed),
                TextStream(params.stop),
            )
        )

    def start(self) -> None:
        """Run the loop on a daemon thread (it dies with the process: Triton kills the stub on unload)."""
        self.thread = threading.Thread(target=self.run, name="kubeforge-generation", daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop after its current step; the requests still in flight end with an error."""
        self.waiting.put(None)
        if self.thread is not None:
            self.thread.join(timeout)

    def run(self) -> None:
        """Step until ``stop``; a failing step fails its sequences, never the loop."""
        with torch.no_grad():
            while not self.stopped:
                try:
                    self.step(block=True)
                except Exception as exc:  # reported to every affected client, then the loop carries on
                    log.exception("generation step failed")
                    for sequence in self.running:
                        self._release(sequence)
                        sequence.stream.fail(f"{type(exc).__name__}: {exc}")
                    self.running = []
        unfinished: list[Sequence | None] = list(self.running)
        while not self.waiting.empty():
            unfinished.append(self.waiting.get_nowait())
        for leftover in unfinished:
            if leftover is not None:
                leftover.stream.fail("the model is being unloaded")

    def step(self, block: bool = False) -> None:
        """One iteration: drop the cancelled, admit, advance every running sequence by one byte.

        With ``block``, an idle engine waits for the next request instead of returning.
        """
        # the cancelled go first, so their slots take waiting requests in this same step
        self.running = [s for s in self.running if not self._cancelled(s)]
        idle = block and not self.running
        if idle:  # about to wait for a request: say there are none in flight now, not after it came
            self.observer.active(self.waiting.qsize())
        self._admit(idle)
        if self.running:
            self._advance()
        self.observer.active(len(self.running) + self.waiting.qsize())

    def _admit(self, block: bool) -> None:
        while self.free_slots and not self.stopped:
            try:
                sequence = self.waiting.get(block=block)
            except queue.Empty:
                return
            block = False
            if sequence is None:
                self.stopped = True
                return
            if self._cancelled(sequence):
                continue
            sequence.slot = self.free_slots.pop()
            logits = self._prefill(sequence, sequence.prompt)
            sequence.tokens = list(sequence.prompt)
            self.observer.first_token(self.clock() - sequence.submitted)
            self.observer.tokens(1)
            if self._emit(sequence, logits):
                self.running.append(sequence)

    def _cancelled(self, sequence: Sequence) -> bool:
        if not sequence.stream.cancelled():
            return False
        self._release(sequence)
        sequence.stream.send("", FinishReason.CANCELLED)
        return True

    def _prefill(self, sequence: Sequence, tokens: list[int]) -> torch.Tensor:
        """Cache ``tokens`` at positions 0.. of the sequence's slot; the logits of the byte after them."""
        logits = self.model.forward_cached(
            torch.tensor([tokens], device=self.device),
            torch.tensor([sequence.slot], device=self.device),
            torch.arange(len(tokens), device=self.device).unsqueeze(0),
            self.k_cache,
            self.v_cache,
        )
        sequence.cached = len(tokens)
        self.observer.forward_pass(1)
        return logits[0].cpu()

    def _advance(self) -> None:
        """One byte more for every running sequence: one batched pass, plus a prompt pass for any that
        reached the end of the context (it continues from its last ``window`` bytes)."""
        full = [s for s in self.running if s.cached >= self.context_length]
        batch = [s for s in self.running if s.cached < self.context_length]
        rows: list[tuple[Sequence, torch.Tensor]] = []
        if batch:
            logits = self.model.forward_cached(
                torch.tensor([[s.tokens[-1]] for s in batch], device=self.device),
                torch.tensor([s.slot for s in batch], device=self.device),
                torch.tensor([[s.cached] for s in batch], device=self.device),
                self.k_cache,
                self.v_cache,
            ).cpu()
            self.observer.forward_pass(len(batch))
            for sequence, row in zip(batch, logits, strict=True):
                sequence.cached += 1
                rows.append((sequence, row))
        for sequence in full:
            sequence.tokens = sequence.tokens[-self.window :]
            rows.append((sequence, self._prefill(sequence, sequence.tokens)))
        self.observer.tokens(len(rows))
        self.running = [sequence for sequence, row in rows if self._emit(sequence, row)]

    def _emit(self, sequence: Sequence, logits: torch.Tensor) -> bool:
        """Sample a byte and send its text; False when the sequence is finished (its slot is then free)."""
        token = sample(logits, sequence.params, sequence.generator)
        sequence.tokens.append(token)
        sequence.generated += 1
        text, stopped = sequence.text.push(token)
        finish = None
        if stopped:
            finish = FinishReason.STOP
        elif sequence.generated >= sequence.params.max_tokens:
            finish = FinishReason.LENGTH
            text += sequence.text.flush()
        if finish is not None:
            self._release(sequence)
        sequence.stream.send(text, finish)
        return finish is None

    def _release(self, sequence: Sequence) -> None:
        if sequence.slot >= 0:
            self.free_slots.append(sequence.slot)
            sequence.slot = -1
