"""What goes in and out of the engine: its errors, what a loaded model turned out to be, its counters and
the observer it reports to. Imports no inference library."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from chat_common.sequence import EngineObserver

__all__ = ["EngineStats", "HFObserver", "LoadError", "ModelInfo", "ModelNotLoaded"]


class ModelNotLoaded(Exception):
    """The model is not (or no longer) loaded in the engine."""


class LoadError(Exception):
    """The model could not be loaded; the message says why and what to change."""


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model turned out to be."""

    device: str
    dtype: str
    quantization: str
    memory_bytes: int
    context_length: int
    is_encoder_decoder: bool
    has_chat_template: bool
    batching: Literal["continuous", "cohort"]


@dataclass
class EngineStats:
    """Counters of one model since it was loaded (a copy; see :meth:`HFEngine.stats`)."""

    forward_passes: int = 0
    prefill_passes: int = 0
    decode_passes: int = 0
    decode_rows: int = 0
    """Sum over decode passes of the sequences in the pass: decode_rows / decode_passes is the mean batch."""
    max_batch_rows: int = 0
    merges: int = 0
    admitted: int = 0
    finished: int = 0
    cancelled: int = 0
    failed: int = 0
    generated_tokens: int = 0
    waiting: int = 0
    running: int = 0


class HFObserver(EngineObserver, Protocol):
    """The counters every engine reports, plus this engine's forward passes (kind ``prefill`` or ``decode``,
    and the sequences in the pass)."""

    def forward(self, model: str, kind: str, rows: int) -> None: ...
