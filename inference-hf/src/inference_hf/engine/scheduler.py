"""One scheduler step for one model, in named phases, on the engine's worker thread:

1. **drop the cancelled**: rows whose client went away leave their batch before the next forward pass
   (an index select on the cache), so a dropped sequence costs at most the step already running;
2. **admit prompts**: waiting sequences, up to ``max_batch_size`` running, are prefilled together in one
   forward pass (left-padded), their first tokens sampled, and their cache rows merged into the running
   batch (or, for a model that cannot merge, kept as a cohort batch of their own);
3. **decode**: one forward pass per batch, one token for every row;
4. **sample**: each row with its own parameters and generator;
5. **retire**: rows that finished (EOS, stop sequence, limit) or failed leave the batch and are reported.

A failure stays with the sequences it concerns. A row whose sampling raises, or whose next token the model
cannot take (an id outside its vocabulary), ends with :class:`~chat_common.generation.Failed` alone; a
prompt with such an id is refused before its prefill. A forward pass that raises fails the rows of that
pass only: the prompts being admitted, or one batch; other batches and the waiting queue go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch

from chat_common.generation import Failed, Sequence
from chat_common.sequence import SequenceState
from inference_hf.engine.batches import Batch, CausalBatch, Row, Seq2SeqBatch
from inference_hf.engine.loading import Loaded
from inference_hf.engine.sampling import TokenSampler
from inference_hf.engine.types import HFObserver
from inference_hf.text import IncrementalDecoder

__all__ = ["Scheduler"]

logger = logging.getLogger(__name__)


class Scheduler:
    """The phases of a step; its only state is the observer, the engine's lock (for the waiting queues)
    and :attr:`new_sampler`."""

    def __init__(self, observer: HFObserver, lock: threading.Condition) -> None:
        self._observer = observer
        self._lock = lock
        self.new_sampler: Callable[[Sequence, torch.device], TokenSampler] = TokenSampler
        """How a sequence gets its sampler: a seam through which tests make one sequence's sampling fail."""

    def step(self, lm: Loaded) -> None:
        for batch in list(lm.batches):
            self._retire(lm, batch)  # only cancelled rows can be done at this point
        self._admit(lm)
        for batch in list(lm.batches):
            if not batch.rows:
                continue
            logits = self._decode(lm, batch)
            if logits is None:
                continue
            self._sample(lm, batch, logits)
            self._retire(lm, batch)

    # -- admit prompts --------------------------------------------------------------------------------
    def _admit(self, lm: Loaded) -> None:
        rows = self._take(lm)
        for row in [r for r in rows if r.state.limit == 0]:
            row.state.finish("length")
            self._report(lm, row)
        for row in rows:
            bad = next((t for t in row.seq.prompt_tokens if not 0 <= t < lm.vocab_size), None)
            if bad is not None:
                row.error = f"the prompt holds token id {bad}, outside the model's vocabulary of {lm.vocab_size}"
                self.fail(lm, row.seq, row.error)
        rows = [r for r in rows if not r.done]
        if not rows:
            return
        kind = Seq2SeqBatch if lm.info.is_encoder_decoder else CausalBatch
        try:
            batch, logits = kind.prefill(lm, rows)
        except Exception as exc:  # these prompts fail; the running batches are untouched
            logger.exception("prefill failed", extra={"model": lm.model_id})
            for row in rows:
                self.fail(lm, row.seq, f"generation failed: {exc}")
            return
        lm.stats.forward_passes += 1
        lm.stats.prefill_passes += 1
        lm.stats.admitted += len(rows)
        self._observer.forward(lm.model_id, "prefill", len(rows))
        self._sample(lm, batch, logits)
        self._retire(lm, batch, running=False)
        if not batch.rows:
            return
        target = next((b for b in lm.batches if b.mergeable and b.rows), None)
        if batch.mergeable and target is not None:
            target.merge(batch)  # type: ignore[arg-type]
            lm.stats.merges += 1
        else:
            lm.batches.append(batch)

    def _take(self, lm: Loaded) -> list[Row]:
        """Waiting sequences for the room left in the batch; one cancelled before it started ends at once."""
        room = lm.max_batch_size - lm.running
        if room <= 0 or not lm.inbox:
            return []
        rows: list[Row] = []
        with self._lock:
            while lm.inbox and len(rows) < room:
                seq = lm.inbox.popleft()
                if seq.cancelled:  # gone before it started
                    row = self._row(lm, seq, 0)
                    row.state.finish("cancelled")
                    self._report(lm, row)
                    continue
                rows.append(self._row(lm, seq, max(0, min(seq.params.max_tokens, self._room(lm, seq)))))
            depth = len(lm.inbox)
        self._observer.queue_depth(lm.model_id, depth)
        return rows

    def _row(self, lm: Loaded, seq: Sequence, limit: int) -> Row:
        state = SequenceState(
            seq, decoder=IncrementalDecoder(lm.tokenizer), is_eos=lm.eos_ids.__contains__, limit=limit
        )
        return Row(state, self.new_sampler(seq, lm.device))

    @staticmethod
    def _room(lm: Loaded, seq: Sequence) -> int:
        """Tokens the sequence may still generate within the model's context."""
        if lm.info.is_encoder_decoder:
            return lm.info.context_length - 1
        return lm.info.context_length - len(seq.prompt_tokens)

    # -- decode ---------------------------------------------------------------------------------------
    def _decode(self, lm: Loaded, batch: Batch) -> torch.Tensor | None:
        """One forward pass for the batch; None when nothing is left to sample (the pass failed, or every
        row's next token was refused)."""
        for row, token in zip(batch.rows, batch.last.tolist(), strict=True):
            if not 0 <= token < lm.vocab_size:
                row.error = f"token id {token} is outside the model's vocabulary of {lm.vocab_size}"
        if any(row.error for row in batch.rows):
            self._retire(lm, batch)
            if not batch.rows:
                return None
        try:
            logits = batch.forward(lm)
        except Exception as exc:  # this batch's rows fail; other batches and the queue go on
            logger.exception("decode failed", extra={"model": lm.model_id})
            for row in batch.rows:
                self.fail(lm, row.seq, f"generation failed: {exc}")
            lm.batches.remove(batch)
            return None
        rows = len(batch.rows)
        lm.stats.forward_passes += 1
        lm.stats.decode_passes += 1
        lm.stats.decode_rows += rows
        lm.stats.max_batch_rows = max(lm.stats.max_batch_rows, rows)
        self._observer.forward(lm.model_id, "decode", rows)
        return logits

    # -- sample ---------------------------------------------------------------------------------------
    def _sample(self, lm: Loaded, batch: Batch, logits: torch.Tensor) -> None:
        tokens: list[int] = []
        generated = 0
        for i, row in enumerate(batch.rows):
            token = lm.pad_id
            if not row.done and not row.seq.cancelled:
                try:
                    token = row.sample(logits[i])
                    row.accept(token)
                    generated += 1
                except Exception as exc:  # this sequence fails; its batch-mates go on
                    logger.exception("sampling failed", extra={"model": lm.model_id, "request_id": row.seq.request_id})
                    row.error = f"generation failed: {exc}"
                    token = lm.pad_id
            tokens.append(token)
        batch.last = torch.tensor(tokens, dtype=torch.long, device=lm.device)
        lm.stats.generated_tokens += generated
        self._observer.tokens(lm.model_id, generated)

    # -- retire ---------------------------------------------------------------------------------------
    def _retire(self, lm: Loaded, batch: Batch, *, running: bool = True) -> None:
        """Remove finished, failed and cancelled rows from the batch and report them; a batch left empty
        leaves the model's running batches (``running``: it is one of them)."""
        keep: list[int] = []
        for i, row in enumerate(batch.rows):
            if row.error is not None:
                self.fail(lm, row.seq, row.error)
                continue
            if row.seq.cancelled and not row.done:
                row.state.finish("cancelled")
            if row.done:
                self._report(lm, row)
            else:
                keep.append(i)
        if len(keep) == len(batch.rows):
            return
        if keep:
            batch.keep(keep)
        else:
            batch.rows = []
            if running:
                lm.batches.remove(batch)

    # -- reporting ------------------------------------------------------------------------------------
    def _report(self, lm: Loaded, row: Row) -> None:
        event = row.state.finished_event()
        lm.stats.finished += 1
        if event.finish_reason == "cancelled":
            lm.stats.cancelled += 1
        logger.info(
            "generation finished",
            extra={
                "model": lm.model_id,
                "request_id": row.seq.request_id,
                "finish_reason": event.finish_reason,
                "prompt_tokens": event.prompt_tokens,
                "completion_tokens": event.completion_tokens,
                "duration_ms": round((time.perf_counter() - row.state.started) * 1000, 1),
            },
        )
        self._observer.finished(lm.model_id, event, row.state.first_token_s)
        row.seq.sink(event)

    def fail(self, lm: Loaded, seq: Sequence, message: str) -> None:
        """End ``seq`` with :class:`Failed` (it has left, or never joined, a batch)."""
        lm.stats.failed += 1
        self._observer.failed(lm.model_id)
        seq.sink(Failed(message))
