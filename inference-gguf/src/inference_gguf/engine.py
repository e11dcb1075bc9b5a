"""The llama.cpp engine: the only module that imports ``llama_cpp``.

One :class:`LlamaEngine` per model. A dedicated worker thread owns the llama context (it is not
thread-safe); the event loop hands it :class:`Sequence` objects through a bounded queue and gets
:data:`EngineEvent` values back through each sequence's ``sink`` callback (called on the worker thread).

The work is split so that batching can come later without touching the protocol side:
:class:`SequenceState` does everything that happens *after* a token is sampled (detokenize, stop
sequences, limits, cancellation); the loop in :meth:`LlamaEngine._run` only decodes and samples. Today
one sequence decodes at a time through ``Llama.generate`` (which also reuses the KV cache for a prompt
prefix shared with the previous request). A batched loop — one ``llama_batch`` per step holding one
token for each generating sequence, each on its own ``seq_id``, as llama.cpp's server does — would keep
a ``SequenceState`` per slot and call :meth:`SequenceState.accept` for each sampled token.
"""

from __future__ import annotations

import codecs
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from chat_common.generation import (
    EngineBusy,
    Failed,
    Finished,
    FinishReason,
    Sequence,
    StopScanner,
    TemplateError,
    TextDelta,
)

__all__ = ["EngineObserver", "LlamaEngine", "SequenceState"]

logger = logging.getLogger(__name__)


class EngineObserver(Protocol):
    """Receives the engine's counters (the service turns them into Prometheus metrics)."""

    def queue_depth(self, model: str, depth: int) -> None: ...
    def running(self, model: str, count: int) -> None: ...
    def tokens(self, model: str, count: int) -> None: ...
    def finished(self, model: str, event: Finished, first_token_s: float | None) -> None: ...
    def failed(self, model: str) -> None: ...


class SequenceState:
    """Everything that happens to a sequence after a token is sampled."""

    def __init__(
        self, seq: Sequence, *, detokenize: Callable[[int], bytes], is_eog: Callable[[int], bool], limit: int
    ) -> None:
        self.seq = seq
        self._detokenize = detokenize
        self._is_eog = is_eog
        self._limit = limit
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopScanner(seq.params.stop)
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None

    def accept(self, token: int) -> bool:
        """Take one sampled token; emit its text; return True when the sequence is finished."""
        if self.seq.cancelled:
            return self.end("cancelled")
        self.completion_tokens += 1  # the end-of-generation token too: it was decoded (as llama-server counts)
        eog = self._is_eog(token)
        if eog and not self.seq.params.ignore_eos:
            return self.end("stop", flush=True)
        if not eog:
            text = self._utf8.decode(self._detokenize(token))
            if text:
                out, stopped = self._stops.feed(text)
                if out:
                    self.seq.sink(TextDelta(out))
                if stopped:  # the stop sequence and anything after it are not part of the answer
                    return self.end("stop")
        if self.completion_tokens >= self._limit:
            return self.end("length", flush=True)
        return False

    def end(self, reason: FinishReason, *, flush: bool = False) -> bool:
        """Mark the sequence finished; with ``flush``, emit text held back for a possible stop sequence."""
        self.finish_reason = reason
        if flush:
            tail = self._stops.flush() + self._utf8.decode(b"", final=True)
            if tail:
                self.seq.sink(TextDelta(tail))
        return True

    def finished_event(self) -> Finished:
        assert self.finish_reason is not None
        return Finished(self.finish_reason, len(self.seq.prompt_tokens), self.completion_tokens)


_SHUTDOWN: Any = object()


class LlamaEngine:
    """One GGUF model, its chat template and its worker thread."""

    def __init__(
        self,
        model_id: str,
        path: Path,
        *,
        n_ctx: int,
        n_threads: int | None,
        n_batch: int,
        n_gpu_layers: int,
        flash_attn: bool,
        max_queue: int,
        observer: EngineObserver,
        verbose: bool = False,
    ) -> None:
        self.model_id = model_id
        self.path = path
        self._llama_kwargs = dict(
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_threads_batch=n_threads,
            n_batch=n_batch,
            n_gpu_layers=n_gpu_layers,
            flash_attn=flash_attn,
            verbose=verbose,
        )
        self._queue: queue.Queue[Sequence] = queue.Queue(maxsize=max_queue)
        self._observer = observer
        self._llm: Any = None
        self._template: jinja2.Template | None = None
        self._thread: threading.Thread | None = None
        self._special_text: dict[str, str] = {}
        self._add_bos = False

    # -- lifecycle ---------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the weights (slow: call it off the event loop) and start the worker thread."""
        import llama_cpp

        started = time.perf_counter()
        self._llm = llama_cpp.Llama(model_path=str(self.path), **self._llama_kwargs)
        vocab = self._llm._model.vocab
        self._is_eog = lambda token: bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        self._add_bos = bool(self._llm._model.add_bos_token())
        self._special_text = {
            "bos_token": self._token_text(self._llm.token_bos()),
            "eos_token": self._token_text(self._llm.token_eos()),
        }
        source = self._llm.metadata.get("tokenizer.chat_template")
        if source:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise_template_error
            self._template = env.from_string(source)
        else:
            logger.warning("model %s has no chat template in its GGUF metadata", self.model_id)
        self._thread = threading.Thread(target=self._run, name=f"engine-{self.model_id}", daemon=True)
        self._thread.start()
        logger.info(
            "model loaded",
            extra={
                "model": self.model_id,
                "path": str(self.path),
                "n_ctx": self.n_ctx,
                "load_s": round(time.perf_counter() - started, 2),
            },
        )

    def close(self) -> None:
        if self._thread is not None:
            while True:  # make room for the shutdown marker; waiting sequences are cancelled
                try:
                    self._queue.put_nowait(_SHUTDOWN)
                    break
                except queue.Full:
                    self._drop_one_waiting()
            self._thread.join(timeout=30)
            self._thread = None
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    @property
    def loaded(self) -> bool:
        return self._llm is not None

    @property
    def n_ctx(self) -> int:
        return int(self._llm.n_ctx())

    # -- prompt ------------------------------------------------------------------------------------
    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt exactly as the model's own chat template writes it, ready for the assistant's turn."""
        if self._template is None:
            raise TemplateError(f"model '{self.model_id}' has no chat template in its GGUF metadata")
        try:
            return self._template.render(messages=messages, add_generation_prompt=True, **self._special_text)
        except jinja2.TemplateError as exc:
            raise TemplateError(f"the chat template of '{self.model_id}' rejected the messages: {exc}") from exc

    def tokenize(self, prompt: str) -> list[int]:
        add_bos = self._add_bos and not prompt.startswith(self._special_text["bos_token"])
        return list(self._llm.tokenize(prompt.encode(), add_bos=add_bos, special=True))

    def _token_text(self, token: int) -> str:
        return bytes(self._llm.detokenize([token], special=True)).decode("utf-8", errors="replace")

    # -- requests ----------------------------------------------------------------------------------
    def submit(self, seq: Sequence) -> None:
        """Queue a sequence; raises :class:`EngineBusy` when the queue is full."""
        try:
            self._queue.put_nowait(seq)
        except queue.Full:
            raise EngineBusy(f"model '{self.model_id}' has {self._queue.maxsize} requests waiting") from None
        self._observer.queue_depth(self.model_id, self._queue.qsize())

    def _drop_one_waiting(self) -> None:
        try:
            seq = self._queue.get_nowait()
        except queue.Empty:
            return
        if seq is not _SHUTDOWN:
            seq.sink(Failed("the model is shutting down"))

    # -- worker thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            seq = self._queue.get()
            if seq is _SHUTDOWN:
                return
            self._observer.queue_depth(self.model_id, self._queue.qsize())
            self._observer.running(self.model_id, 1)
            try:
                self._generate(seq)
            except Exception as exc:  # a failure ends this sequence, never the worker
                logger.exception("generation failed", extra={"model": self.model_id, "request_id": seq.request_id})
                self._observer.failed(self.model_id)
                seq.sink(Failed(f"generation failed: {exc}"))
            finally:
                self._observer.running(self.model_id, 0)

    def _generate(self, seq: Sequence) -> None:
        p = seq.params
        room = self.n_ctx - len(seq.prompt_tokens)
        state = SequenceState(
            seq,
            detokenize=lambda token: bytes(self._llm.detokenize([token])),
            is_eog=self._is_eog,
            limit=max(0, min(p.max_tokens, room)),
        )
        started = time.perf_counter()
        first_token_s: float | None = None
        if seq.cancelled or room <= 0:
            state.end("cancelled" if seq.cancelled else "length")
        else:
            self._llm.set_seed(p.seed if p.seed is not None else random.getrandbits(32))
            tokens = self._llm.generate(
                seq.prompt_tokens,
                temp=p.temperature,
                top_p=p.top_p,
                top_k=p.top_k,
                min_p=p.min_p,
                repeat_penalty=p.repeat_penalty,
                presence_penalty=p.presence_penalty,
                frequency_penalty=p.frequency_penalty,
            )
            try:
                for token in tokens:
                    if first_token_s is None:
                        first_token_s = time.perf_counter() - started
                    counted = state.completion_tokens
                    done = state.accept(token)
                    if state.completion_tokens > counted:
                        self._observer.tokens(self.model_id, 1)
                    if done:
                        break
            finally:
                tokens.close()
        event = state.finished_event()
        logger.info(
            "generation finished",
            extra={
                "model": self.model_id,
                "request_id": seq.request_id,
                "finish_reason": event.finish_reason,
                "prompt_tokens": event.prompt_tokens,
                "completion_tokens": event.completion_tokens,
                "duration_ms": round((time.perf_counter() - started) * 1000, 1),
            },
        )
        self._observer.finished(self.model_id, event, first_token_s)
        seq.sink(event)


def _raise_template_error(message: str) -> None:
    raise jinja2.TemplateError(message)
