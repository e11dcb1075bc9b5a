"""What happens to a sequence after each sampled token, the same in every engine: token accounting, the
text a client sees (decoded incrementally, a split UTF-8 character held back), stop sequences, the
``max_tokens`` / end-of-sequence / stop finish reasons, and the streamed :class:`TextDelta` values.

An engine samples; :class:`SequenceState` decides. The engine gives it a :class:`TextDecoder` (how its
tokenizer turns token ids into text: :class:`ByteDecoder` for a table of byte pieces, as llama.cpp has;
inference-hf brings its own over a Hugging Face tokenizer), an end-of-sequence test and the token limit.
:class:`EngineObserver` is what every engine reports to its service's metrics. Nothing here imports an
inference library.
"""

from __future__ import annotations

import codecs
import time
from collections.abc import Callable
from collections.abc import Sequence as Seq
from typing import Protocol

from chat_common.generation import Finished, FinishReason, Sequence, StopScanner, TextDelta

__all__ = ["ByteDecoder", "EngineObserver", "SequenceState", "TextDecoder"]


class EngineObserver(Protocol):
    """The counters every engine reports as they change (the service turns them into Prometheus metrics;
    :class:`chat_common.engine_serving.GenerationMetrics` implements them). Each engine's own observer
    protocol extends this one with its batching counters. Called on the engine's worker thread."""

    def queue_depth(self, model: str, depth: int) -> None: ...
    def running(self, model: str, count: int) -> None: ...
    def tokens(self, model: str, count: int) -> None: ...
    def finished(self, model: str, event: Finished, first_token_s: float | None) -> None: ...
    def failed(self, model: str) -> None: ...


class TextDecoder(Protocol):
    """Token ids to text, one token at a time."""

    def push(self, token: int) -> str:
        """The text this token adds (may be empty while a character is incomplete)."""
        ...

    def flush(self) -> str:
        """What is still held back at the end of the sequence."""
        ...


class ByteDecoder:
    """Each token's bytes from a table (``pieces[token]``), decoded as UTF-8 across token boundaries: a
    character split over two tokens comes out whole with the second; an incomplete one at the very end
    flushes as U+FFFD."""

    def __init__(self, pieces: Seq[bytes]) -> None:
        self._pieces = pieces
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        return self._utf8.decode(self._pieces[token])

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class SequenceState:
    """One running sequence, from its first sampled token to its :class:`Finished` event.

    :meth:`accept` takes each sampled token and streams its text through the sequence's ``sink``; the
    sequence ends on a stop sequence, an end-of-sequence token (unless ``ignore_eos``), ``limit`` tokens, or
    a cancel. Text that could still become a stop sequence is held back until the next token decides, and
    what is held at the end (including a split character's tail) is checked for stop sequences too before
    it is sent: a client never sees a stop sequence.
    """

    def __init__(self, seq: Sequence, *, decoder: TextDecoder, is_eos: Callable[[int], bool], limit: int) -> None:
        self.seq = seq
        self.limit = limit
        self._decoder = decoder
        self._is_eos = is_eos
        self._stops = StopScanner(seq.params.stop)
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None
        self.started = time.perf_counter()
        self.first_token_s: float | None = None

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def accept(self, token: int) -> bool:
        """Take one sampled token; emit its text; return True when the sequence is finished.

        A sequence cancelled meanwhile ends as ``cancelled`` and the token is not counted."""
        if self.seq.cancelled:
            return self.finish("cancelled")
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
        self.completion_tokens += 1  # an end-of-sequence token counts too: it was generated (as llama-server counts)
        eos = self._is_eos(token)
        if eos and not self.seq.params.ignore_eos:
            return self.finish("stop", flush=True)
        if not eos:
            text = self._decoder.push(token)
            if text:
                out, stopped = self._stops.feed(text)
                if out:
                    self.seq.sink(TextDelta(out))
                if stopped:  # the stop sequence and anything after it are not part of the answer
                    return self.finish("stop")
        if self.completion_tokens >= self.limit:
            return self.finish("length", flush=True)
        return False

    def finish(self, reason: FinishReason, *, flush: bool = False) -> bool:
        """Mark the sequence finished. With ``flush``, the decoder's tail goes through the stop scanner and
        whatever is still held back is sent; a stop sequence completed by that tail makes the reason
        ``stop`` and cuts the text there."""
        if flush:
            tail, stopped = self._stops.feed(self._decoder.flush())
            if stopped:
                reason = "stop"
            else:
                tail += self._stops.flush()
            if tail:
                self.seq.sink(TextDelta(tail))
        self.finish_reason = reason
        return True

    def finished_event(self) -> Finished:
        assert self.finish_reason is not None, "finish() first"
        return Finished(self.finish_reason, len(self.seq.prompt_tokens), self.completion_tokens)
