"""Incremental detokenization with the real SmolLM2 tokenizer (stop sequences: tests/common)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_hf.text import IncrementalDecoder


@pytest.mark.parametrize(
    "text",
    ["Hello world, how are you?", "héllo wörld — ça va? 🙂🚀 日本語のテキスト", "  leading spaces\n\nand\ttabs  "],
)
def test_token_by_token_text_adds_up_to_the_whole(prepared: Path, text: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(prepared))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(t) for t in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in pieces)  # a split character is never emitted half-done
