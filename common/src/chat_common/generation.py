"""What an inference engine and its HTTP side exchange, whatever runs the model (llama.cpp, transformers).

The HTTP side validates a request, turns it into :class:`SamplingParams` (the request's fields over the
model's :class:`SamplingDefaults`) and hands the engine a :class:`Sequence`. The engine, on its own worker
thread, calls the sequence's ``sink`` with :data:`EngineEvent` values: text as it is decoded, then exactly one
:class:`Finished` or :class:`Failed`. :class:`StopScanner` is the stop-sequence logic both engines apply to
the text they decode. Nothing here imports an inference library.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "EngineBusy",
    "EngineEvent",
    "Failed",
    "FinishReason",
    "Finished",
    "SamplingDefaults",
    "SamplingParams",
    "Sequence",
    "StopScanner",
    "TemplateError",
    "TextDelta",
]

FinishReason = Literal["stop", "length", "cancelled"]


class SamplingDefaults(BaseModel):
    """Used for every request field the client leaves out, per model. The values are llama.cpp server's
    defaults, so a model answers alike on either inference service."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.8, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.0, gt=0.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    max_tokens: int | None = Field(None, ge=1)
    stop: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    presence_penalty: float
    frequency_penalty: float
    max_tokens: int
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str


EngineEvent = TextDelta | Finished | Failed


class EngineBusy(Exception):
    """The model's queue is full; the client should retry later."""


class TemplateError(Exception):
    """The chat template is missing or could not render these messages (the message says which)."""


@dataclass(eq=False)
class Sequence:
    """One generation request as the engine sees it."""

    prompt_tokens: list[int]
    params: SamplingParams
    sink: Callable[[EngineEvent], None]
    request_id: str | None = None
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Ask the engine to drop this sequence; it decodes no further token for it."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()


class StopScanner:
    """Watches streamed text for stop sequences.

    Text that could still turn into a stop sequence (a suffix that is a prefix of one) is held back
    until the next piece decides; everything else is released at once, so streaming stays token by token.
    """

    def __init__(self, stops: Seq[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return the text that is safe to emit and whether a stop sequence was reached.

        After a stop sequence, only the text before its first occurrence is returned; the rest is dropped.
        """
        if not self._stops:
            return text, False
        window = self._held + text
        cut = min((i for i in (window.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self._held = ""
            return window[:cut], True
        keep = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(window)), keep, -1):
                if window.endswith(stop[:size]):
                    keep = size
                    break
        self._held = window[len(window) - keep :] if keep else ""
        return window[: len(window) - keep], False

    def flush(self) -> str:
        """The held-back text, for a sequence that ends without reaching a stop sequence."""
        held, self._held = self._held, ""
        return held
