"""Continuous batching: the loop the engine's worker thread runs.

Each step:

1. sequences whose client went away are ended (their slot is free for this very step);
2. waiting sequences are admitted into idle slots, each into the slot whose KV cache shares the longest
   prefix with its prompt (only the rest is evaluated);
3. one ``llama_batch`` is built: one token for every generating sequence, then prompt chunks of newly
   admitted ones, up to ``n_batch`` tokens in all; a prompt longer than that is spread over several steps
   while the others keep generating;
4. one ``llama_decode``; then every sequence whose logits came out samples its next token with its own
   sampler (argmax rows in numpy) and hands it to its :class:`~chat_common.sequence.SequenceState`.

Sequences join and leave between steps. Nothing here blocks except waiting for work when no slot is busy.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from chat_common.generation import Failed, Finished, FinishReason, Sequence
from chat_common.sequence import EngineObserver, SequenceState
from inference_gguf.batch import TokenBatch
from inference_gguf.sampling import SequenceSampler
from inference_gguf.slots import Slot, pick_slot

__all__ = ["SHUTDOWN", "BatchObserver", "EngineStats", "Scheduler"]

logger = logging.getLogger(__name__)

SHUTDOWN: Any = object()


class BatchObserver(EngineObserver, Protocol):
    """The counters every engine reports, plus continuous batching and prompt-cache reuse."""

    def step(self, model: str, sequences: int, tokens: int, decode_s: float, step_s: float) -> None: ...
    def prompt(self, model: str, reused: int, evaluated: int) -> None: ...


@dataclass
class EngineStats:
    """Counters since the engine started (read by tests and the benchmark; written by the worker only)."""

    steps: int = 0
    shared_steps: int = 0  # steps that decoded a generated token for two sequences or more
    batch_tokens: int = 0
    prompt_reused: int = 0
    prompt_evaluated: int = 0
    decode_s: float = 0.0  # time inside llama_decode
    step_s: float = 0.0  # whole steps: decode plus the Python around it


class Scheduler:
    """Owns the slots, the batch and the waiting queue's consumer side; runs on one thread."""

    def __init__(
        self,
        *,
        model_id: str,
        ctx: Any,
        n_ctx: int,
        n_batch: int,
        n_slots: int,
        n_vocab: int,
        vocab: Any,
        waiting: queue.Queue[Sequence],
        observer: BatchObserver,
        new_state: Callable[[Sequence, int], SequenceState],
    ) -> None:
        import llama_cpp

        self._llama = llama_cpp
        self.model_id = model_id
        self._ctx = ctx
        self._memory = llama_cpp.llama_get_memory(ctx)
        self._n_ctx = n_ctx
        self._n_vocab = n_vocab
        self._vocab = vocab
        self._queue = waiting
        self._observer = observer
        self._new_state = new_state
        self.slots = [Slot(i) for i in range(n_slots)]
        self._batch = TokenBatch(n_batch)
        self._held: Sequence | None = None  # taken from the queue, waiting for a free slot
        self._shutdown = False
        self.stats = EngineStats()

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        while True:
            try:
                self._admit()
                if self._shutdown:
                    self._fail_all("the model is shutting down")
                    return
                if any(s.busy for s in self.slots):
                    self._step()
            except Exception as exc:  # a failure ends the sequences in flight, never the worker
                logger.exception("decoding step failed", extra={"model": self.model_id})
                self._fail_all(f"generation failed: {exc}")

    @property
    def holding(self) -> bool:
        """Whether a sequence taken from the queue waits here for a free slot."""
        return self._held is not None

    def busy_slots(self) -> int:
        return sum(s.busy for s in self.slots)

    # -- admission -----------------------------------------------------------------------------------
    def _admit(self) -> None:
        for slot in self.slots:
            if slot.state is not None and slot.state.seq.cancelled:
                self._finish(slot, "cancelled")
        while True:
            if self._held is None:
                try:
                    item = self._queue.get(block=not any(s.busy for s in self.slots))
                except queue.Empty:
                    break
                if item is SHUTDOWN:
                    self._shutdown = True
                    break
                self._held = item
            seq = self._held
            if seq.cancelled:
                self._held = None
                seq.sink(Finished("cancelled", len(seq.prompt_tokens), 0))
                continue
            if not self._place(seq):
                break
            self._held = None
        self._observer.queue_depth(self.model_id, self._queue.qsize() + (self._held is not None))
        self._observer.running(self.model_id, self.busy_slots())

    def _place(self, seq: Sequence) -> bool:
        """Put ``seq`` in a slot; False when every slot is busy."""
        prompt = seq.prompt_tokens
        pick = pick_slot(self.slots, prompt)
        if pick is None:
            return False
        slot, common = pick
        limit = max(0, min(seq.params.max_tokens, self._n_ctx - len(prompt)))
        state = self._new_state(seq, limit)
        if limit == 0 or not prompt:
            state.finish("length")
            seq.sink(state.finished_event())
            return True
        reuse = min(common, len(prompt) - 1)  # at least one token is evaluated: its logits start the answer
        if len(slot.cache) > reuse:
            self._llama.llama_memory_seq_rm(self._memory, slot.seq_id, reuse, -1)
        grammar = getattr(seq, "grammar", None)  # a GrammarSequence's response_format
        sampler = SequenceSampler(seq.params, self._n_vocab, vocab=self._vocab, grammar=grammar)
        slot.assign(state, sampler, reuse)
        self.stats.prompt_reused += reuse
        self.stats.prompt_evaluated += len(prompt) - reuse
        self._observer.prompt(self.model_id, reuse, len(prompt) - reuse)
        return True

    # -- one step ------------------------------------------------------------------------------------
    def _step(self) -> None:
        started = time.perf_counter()
        batch = self._batch
        batch.clear()
        outputs: list[tuple[Slot, int]] = []  # (slot, batch index of its logits)
        generating = [s for s in self.slots if s.next_token is not None]
        for slot in generating:
            token = slot.next_token
            assert token is not None
            outputs.append((slot, batch.add((token,), slot.seq_id, len(slot.cache), output_last=True)))
        chunks: list[tuple[Slot, int]] = []
        for slot in sorted((s for s in self.slots if s.todo), key=lambda s: s.started):
            if batch.room == 0:
                break
            size = min(len(slot.todo), batch.room)
            last = size == len(slot.todo)
            index = batch.add(slot.todo[:size], slot.seq_id, len(slot.cache), output_last=last)
            chunks.append((slot, size))
            if last:
                outputs.append((slot, index))

        decode_started = time.perf_counter()
        rc = self._llama.llama_decode(self._ctx, batch.struct)
        decode_s = time.perf_counter() - decode_started
        if rc != 0:
            for slot in [*generating, *(s for s, _ in chunks)]:
                self._forget(slot)
                self._fail(slot, f"llama_decode failed ({rc}); retry the request")
            return

        for slot in generating:
            slot.cache.append(slot.next_token)  # type: ignore[arg-type]
            slot.next_token = None
        for slot, size in chunks:
            slot.cache.extend(slot.todo[:size])
            del slot.todo[:size]
        stats = self.stats
        stats.steps += 1
        stats.shared_steps += len(generating) >= 2
        stats.batch_tokens += batch.n
        stats.decode_s += decode_s

        generated = 0
        for slot, index in outputs:
            state, sampler = slot.state, slot.sampler
            assert state is not None and sampler is not None
            if sampler.greedy:
                row = np.ctypeslib.as_array(self._llama.llama_get_logits_ith(self._ctx, index), shape=(self._n_vocab,))
                token = int(row.argmax())
            else:
                token = sampler.sample(self._ctx, index)
            counted = state.completion_tokens
            done = state.accept(token)
            generated += state.completion_tokens - counted
            if done:
                self._finish(slot)
            else:
                slot.next_token = token
        self._observer.tokens(self.model_id, generated)
        step_s = time.perf_counter() - started
        stats.step_s += step_s
        self._observer.step(self.model_id, len(generating) + len(chunks), batch.n, decode_s, step_s)

    # -- ending sequences ----------------------------------------------------------------------------
    def _finish(self, slot: Slot, reason: FinishReason | None = None) -> None:
        state = slot.state
        assert state is not None
        if reason is not None:
            state.finish(reason)
        event = state.finished_event()
        logger.info(
            "generation finished",
            extra={
                "model": self.model_id,
                "request_id": state.seq.request_id,
                "finish_reason": event.finish_reason,
                "prompt_tokens": event.prompt_tokens,
                "completion_tokens": event.completion_tokens,
                "duration_ms": round((time.perf_counter() - state.started) * 1000, 1),
            },
        )
        self._observer.finished(self.model_id, event, state.first_token_s)
        slot.release()
        self._observer.running(self.model_id, self.busy_slots())
        state.seq.sink(event)

    def _fail(self, slot: Slot, message: str) -> None:
        state = slot.state
        if state is None:
            return
        self._observer.failed(self.model_id)
        slot.release()
        self._observer.running(self.model_id, self.busy_slots())
        state.seq.sink(Failed(message))

    def _forget(self, slot: Slot) -> None:
        """Drop a slot's KV: after a failed decode its cells are not trustworthy."""
        self._llama.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
        slot.cache.clear()
        slot.todo = []
        slot.next_token = None

    def _fail_all(self, message: str) -> None:
        for slot in self.slots:
            if slot.busy:
                self._forget(slot)
                self._fail(slot, message)
        if self._held is not None:
            self._held.sink(Failed(message))
            self._held = None
        self._observer.running(self.model_id, 0)
