"""Turning sampled token ids into the text a client sees: incremental detokenization. (Stop sequences are
:class:`chat_common.generation.StopScanner`, shared with inference-gguf.)

It runs on the engine's worker thread, one instance per sequence, and never imports torch.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Decoder", "IncrementalDecoder"]

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
