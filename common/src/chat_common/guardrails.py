"""Banned phrases in an answer: found case-insensitively at word boundaries, in a whole answer and in a
stream without ever sending a banned phrase to the client.

A phrase matches where it is not inside a longer word (``ban`` matches "Ban!" and "a ban", not
"banner" or "urban"); a space inside a phrase matches any one whitespace character. When a phrase
appears, the whole answer is replaced with the profile's fallback message (seed 000's behaviour).

Streaming (:class:`StreamGuard`): text is released as it comes except its last ``hold`` characters,
where ``hold`` is the longest phrase's length plus one (a match must be followed by a non-word
character or the end before it is certain); the last released character is kept as context for the
word boundary before a match. So a banned phrase never reaches the client; what was
already released before it stays released, and the guard then ends the answer with the fallback.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["Guardrail", "StreamGuard"]


class Guardrail:
    """The banned phrases of one profile, compiled once."""

    def __init__(self, phrases: Sequence[str], fallback: str) -> None:
        cleaned = [" ".join(p.split()) for p in phrases]
        if any(not p for p in cleaned):
            raise ValueError("a banned phrase must not be empty")
        self.phrases = cleaned
        self.fallback = fallback
        # Longest first, so the longest phrase at a position is the one reported.
        alternatives = "|".join(r"\s".join(map(re.escape, p.split())) for p in sorted(cleaned, key=len, reverse=True))
        self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE) if cleaned else None
        # Mid-stream a match must be followed by a non-word character: "ban" at a piece's end may be "banner".
        self._settled = re.compile(rf"(?<!\w)(?:{alternatives})(?=\W)", re.IGNORECASE) if cleaned else None
        # A stream holds back one phrase and the character after it.
        self.hold = max((len(p) for p in cleaned), default=0) + 1

    def find(self, text: str, pos: int = 0, *, complete: bool = True) -> str | None:
        """The first banned phrase in ``text`` starting at or after ``pos`` (as configured), or None.
        Characters before ``pos`` still count for the word boundary before a match. ``complete=False``:
        more text may follow, so a phrase at the very end does not count yet."""
        pattern = self._pattern if complete else self._settled
        if pattern is None:
            return None
        match = pattern.search(text, pos)
        if match is None:
            return None
        found = " ".join(match.group(0).split()).casefold()
        return next(p for p in self.phrases if p.casefold() == found)

    def stream(self) -> StreamGuard:
        return StreamGuard(self)


class StreamGuard:
    """One streamed answer's guard: :meth:`feed` each piece, :meth:`finish` at the end.

    Both return the text safe to send now. Once a phrase is found, ``blocked`` names it and every later
    call returns ``""``: the caller sends the fallback message instead.
    """

    def __init__(self, guardrail: Guardrail) -> None:
        self.guardrail = guardrail
        self.blocked: str | None = None
        self._pending = ""  # text not yet released
        self._before = ""  # the last character released (the word boundary before the pending text)

    def feed(self, text: str) -> str:
        if self.blocked is not None:
            return ""
        if self.guardrail._pattern is None:
            return text
        self._pending += text
        if self._check(complete=False):
            return ""
        cut = len(self._pending) - self.guardrail.hold
        if cut <= 0:
            return ""
        released, self._pending = self._pending[:cut], self._pending[cut:]
        self._before = released[-1]
        return released

    def finish(self) -> str:
        if self.blocked is not None or self._check(complete=True):
            return ""
        rest, self._pending = self._pending, ""
        return rest

    def _check(self, *, complete: bool) -> bool:
        found = self.guardrail.find(self._before + self._pending, len(self._before), complete=complete)
        if found is not None:
            self.blocked, self._pending = found, ""
        return found is not None
