"""Incremental detokenization and stop sequences (no model needed; the real SmolLM2 tokenizer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference_hf.text import IncrementalDecoder, StopScanner


@pytest.mark.parametrize("text", ["Hello world, how are you?", "héllo wörld — ça va? 🙂🚀 日本語のテキスト",
                                  "  leading spaces\n\nand\ttabs  "])
def test_token_by_token_text_adds_up_to_the_whole(prepared: Path, text: str) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(prepared))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(t) for t in ids]
    pieces.append(decoder.flush())
    assert "".join(pieces) == tokenizer.decode(ids)
    assert not any("\ufffd" in p for p in pieces)  # a split character is never emitted half-done


def test_stop_sequence_across_pieces() -> None:
    scanner = StopScanner(["</answer>"])
    assert scanner.feed("The answer is 4.</") == ("The answer is 4.", False)  # "</" held back
    assert scanner.feed("ans") == ("", False)
    assert scanner.feed("wer> and more") == ("", True)


def test_held_text_is_released_when_it_cannot_be_a_stop() -> None:
    scanner = StopScanner(["STOP"])
    assert scanner.feed("a ST") == ("a ", False)
    assert scanner.feed("ew") == ("STew", False)
    assert scanner.feed("ST") == ("", False)
    assert scanner.flush() == "ST"


def test_earliest_stop_wins_and_no_stops_pass_everything() -> None:
    assert StopScanner(["b", "a"]).feed("xxaxb") == ("xx", True)
    assert StopScanner([]).feed("anything") == ("anything", False)
