"""Turning sampled token ids into the text a client sees: incremental detokenization and stop sequences.

Both run on the engine's worker thread, one instance per sequence, and never import torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["Decoder", "IncrementalDecoder", "StopScanner"]

_REPLACEMENT = "\ufffd"


class Decoder(Protocol):
    """The part of a Hugging Face tokenizer this module uses."""

    def decode(self, token_ids: list[int], skip_special_tokens: bool = ...) -> str: ...


class IncrementalDecoder:
    """Text for each new token, right however the tokenizer merges pieces.

    Decoding one token at a time is wrong for most tokenizers: SentencePiece drops a word's leading
    space when the piece starts the string, and byte-level BPE splits a multi-byte character across
    tokens. So each new token is decoded together with a short window of the tokens before it, and
    only what that window adds to the text is emitted; while the tail is an incomplete character
    (decoded as U+FFFD) nothing is emitted and the window waits for the next token.
    """

    def __init__(self, tokenizer: Decoder) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._start = 0  # first token of the context window
        self._emitted = 0  # tokens whose text has been emitted

    def push(self, token: int) -> str:
        self._ids.append(token)
        before = self._decode(self._ids[self._start : self._emitted])
        after = self._decode(self._ids[self._start :])
        if len(after) <= len(before) or after.endswith(_REPLACEMENT):
            return ""
        self._start, self._emitted = self._emitted, len(self._ids)
        return after[len(before) :]

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end), as the tokenizer decodes it."""
        if self._emitted == len(self._ids):
            return ""
        before = self._decode(self._ids[self._start : self._emitted])
        after = self._decode(self._ids[self._start :])
        self._start = self._emitted = len(self._ids)
        return after[len(before) :] if after.startswith(before) else ""

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


class StopScanner:
    """Watches streamed text for stop sequences.

    Text that could still turn into a stop sequence (a suffix that is a prefix of one) is held back
    until the next piece decides; everything else is released at once, so streaming stays token by token.
    """

    def __init__(self, stops: Sequence[str]) -> None:
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
