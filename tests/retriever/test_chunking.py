"""Chunking: size limit, overlap, boundaries (paragraph > line > sentence > word), never mid-word."""

from __future__ import annotations

import itertools
import json

import pytest

from retriever.chunking import Chunk, split_text
from tests.retriever.conftest import ARTICLES


def check_chunks(text: str, chunks: list[Chunk], size: int, overlap: int) -> None:
    """Every chunk is a slice of the text within the size, starts and ends on a word boundary, overlaps the one
    before by at most ``overlap``, and together they cover every non-space character."""
    assert chunks
    covered = [False] * len(text)
    for chunk in chunks:
        assert chunk.text == text[chunk.start : chunk.end]
        assert 0 < len(chunk.text) <= size
        assert chunk.text == chunk.text.strip()
        assert chunk.start == 0 or text[chunk.start - 1].isspace()
        assert chunk.end == len(text) or text[chunk.end].isspace()
        for i in range(chunk.start, chunk.end):
            covered[i] = True
    for before, after in itertools.pairwise(chunks):
        assert before.start < after.start and before.end < after.end
        assert before.end - after.start <= overlap
    assert all(covered[i] or text[i].isspace() for i in range(len(text)))


def test_short_text_is_one_chunk_and_blank_text_none() -> None:
    assert split_text("  Hello there.  ", 100, 20) == [Chunk("Hello there.", 2, 14)]
    assert split_text(" \n\t ", 100, 20) == []


def test_every_article_chunks_within_the_rules() -> None:
    with ARTICLES.open(encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for line in lines]
    for size, overlap in ((800, 120), (300, 60), (200, 0)):
        for text in texts:
            check_chunks(text, split_text(text, size, overlap), size, overlap)


def test_prefers_paragraph_then_sentence_boundaries() -> None:
    first = "Alpha beta gamma delta. " * 10  # 240 characters of sentences
    second = "Epsilon zeta eta theta. " * 10
    text = first.strip() + "\n\n" + second.strip()
    chunks = split_text(text, 400, 0)
    assert chunks[0].text == first.strip()  # cut at the blank line although more would fit
    assert chunks[1].text == second.strip()
    sentences = "One two three four. Five six seven eight nine ten eleven twelve. Thirteen fourteen."
    cut = split_text(sentences, 70, 0)
    assert cut[0].text == "One two three four. Five six seven eight nine ten eleven twelve."


def test_overlap_starts_at_a_sentence_within_the_budget() -> None:
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    chunks = split_text(text, 200, 60)
    check_chunks(text, chunks, 200, 60)
    for before, after in itertools.pairwise(chunks):
        shared = before.end - after.start
        assert 0 < shared <= 60
        assert after.text.startswith("Sentence number")  # the overlap begins a sentence, not mid-sentence


def test_words_are_never_cut_unless_longer_than_a_chunk() -> None:
    text = "short words here " + "x" * 250 + " tail words"
    chunks = split_text(text, 100, 20)
    assert chunks[0].text == "short words here"  # not "short words here xxxx..."
    assert [c.text for c in chunks[1:]] == ["x" * 100, "x" * 100, "x" * 50 + " tail words"]  # only the run is cut
    for chunk in split_text("word " * 100, 47, 10):
        assert all(piece == "word" for piece in chunk.text.split())


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (100, 51), (100, -1)])
def test_invalid_settings_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(ValueError, match="overlap"):
        split_text("some text", size, overlap)
