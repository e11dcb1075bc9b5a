"""Splitting a document's text into overlapping chunks at natural boundaries.

A chunk holds at most ``size`` characters. It ends at the strongest boundary that still fills at least half of
it: a paragraph break (a blank line) first, then a line break, then the end of a sentence, then any space
between words. The next chunk starts a little before the previous one ended, so that a sentence cut by a
boundary is still whole in one of them: the overlap is at most ``overlap`` characters and starts at the
strongest boundary within that budget (the start of a sentence rather than of a word). Words are never cut;
the one exception is a single unbroken run of more than ``size`` characters (a long URL, a hash), cut at
``size``. Whitespace around chunks is dropped; inside them it is kept as written.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Chunk", "split_text"]

_WHITESPACE = re.compile(r"\s+")
_SENTENCE_END = frozenset(".!?")
_CLOSERS = frozenset("\"')]\u2019\u201d\u00bb")  # quotes and brackets that may follow a full stop

_PARAGRAPH, _LINE, _SENTENCE, _WORD = 3, 2, 1, 0


@dataclass(frozen=True)
class Chunk:
    """A piece of the text: ``text == source[start:end]``."""

    text: str
    start: int
    end: int


class _Gap(NamedTuple):
    before: int  # where the whitespace starts (the end of the previous word)
    after: int  # where the next word starts
    level: int  # how strong a boundary it is (_PARAGRAPH ... _WORD)


def _gaps(text: str, first: int, last: int) -> list[_Gap]:
    gaps = []
    for match in _WHITESPACE.finditer(text, first, last):
        space = match.group()
        newlines = space.count("\n")
        if newlines >= 2:
            level = _PARAGRAPH
        elif newlines == 1:
            level = _LINE
        else:
            i = match.start() - 1
            while i > first and text[i] in _CLOSERS:
                i -= 1
            level = _SENTENCE if text[i] in _SENTENCE_END else _WORD
        gaps.append(_Gap(match.start(), match.end(), level))
    return gaps


def split_text(text: str, size: int, overlap: int) -> list[Chunk]:
    """The chunks of ``text``, in order; none for blank text. Raises ``ValueError`` unless
    ``0 <= overlap <= size // 2``."""
    if size < 1 or overlap < 0 or overlap * 2 > size:
        raise ValueError(f"need size >= 1 and 0 <= overlap <= size / 2 (got size={size}, overlap={overlap})")
    first = len(text) - len(text.lstrip())
    last = len(text.rstrip())
    if first >= last:
        return []
    gaps = _gaps(text, first, last)
    befores = [gap.before for gap in gaps]
    afters = [gap.after for gap in gaps]

    chunks: list[Chunk] = []
    start = first  # where the chunk being made starts
    covered = first  # the end of the previous chunk: the next one must reach past it
    resume = first  # the first word after `covered`: where a chunk starts when it cannot overlap
    while True:
        if last - start <= size:
            chunks.append(Chunk(text[start:last], start, last))
            return chunks
        limit = start + size
        candidates = gaps[bisect_right(befores, covered) : bisect_right(befores, limit)]
        if not candidates:
            if resume > start:  # the overlap left too little room for the next word: start without it
                start = resume
                continue
            end = limit  # one "word" longer than a chunk: cut it
            chunks.append(Chunk(text[start:end], start, end))
            start = covered = resume = end
            continue
        half = start + size // 2
        filled = [gap for gap in candidates if gap.before >= half] or candidates[-1:]
        cut = max(filled, key=lambda gap: (gap.level, gap.before))
        chunks.append(Chunk(text[start : cut.before], start, cut.before))
        covered, resume = cut.before, cut.after
        next_start = cut.after
        if overlap:
            lo = bisect_left(afters, max(cut.before - overlap, start + 1))
            hi = bisect_right(afters, cut.before)
            window = gaps[lo:hi]
            if window:
                next_start = max(window, key=lambda gap: (gap.level, -gap.after)).after
        start = next_start
