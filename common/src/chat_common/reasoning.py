"""Splitting a model's reasoning (between an open and a close tag, ``<think>`` and ``</think>`` by
default) from its answer, for a whole answer and incrementally for a stream.

The contract: the text between the tags is reasoning, everything else is answer content; the tags
themselves are dropped; whitespace right after a closing tag is dropped (models put a newline there).
Reasoning is recognised only when the answer *starts* with the open tag (leading whitespace allowed),
as reasoning models emit it; a tag later in the answer is answer text. A stream whose open tag is
never closed is reasoning to its end (:meth:`ReasoningSplitter.finish`). A tag cut across stream
chunks at any position is recognised: only the characters that could still begin a tag are held back.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ReasoningSplitter", "split_reasoning"]


def split_reasoning(text: str, open_tag: str = "<think>", close_tag: str = "</think>") -> tuple[str | None, str]:
    """``(reasoning, content)`` of a whole answer; reasoning is None when the answer has no open tag."""
    splitter = ReasoningSplitter(open_tag, close_tag)
    reasoning, content = splitter.feed(text)
    more_reasoning, more_content = splitter.finish()
    if not splitter.saw_open:
        return None, content + more_content
    return reasoning + more_reasoning, content + more_content


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of ``text`` that is a proper beginning of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


@dataclass
class ReasoningSplitter:
    """Incremental splitter: :meth:`feed` each piece of text, then :meth:`finish` once at the end.

    Each call returns ``(reasoning, content)``: the new text of each kind safe to send now.
    """

    open_tag: str = "<think>"
    close_tag: str = "</think>"

    def __post_init__(self) -> None:
        if not self.open_tag or not self.close_tag:
            raise ValueError("reasoning tags must not be empty")
        self._state = "start"  # start -> (reasoning -> after_close ->) content
        self._held = ""
        self.saw_open = False

    def feed(self, text: str) -> tuple[str, str]:
        reasoning: list[str] = []
        content: list[str] = []
        buf = self._held + text
        self._held = ""
        while buf:
            if self._state == "start":
                stripped = buf.lstrip()
                if stripped.startswith(self.open_tag):
                    self.saw_open = True
                    self._state = "reasoning"
                    buf = stripped[len(self.open_tag) :]
                elif self.open_tag.startswith(stripped):  # all whitespace, or a cut open tag: wait
                    self._held = buf
                    buf = ""
                else:
                    self._state = "content"
            elif self._state == "reasoning":
                at = buf.find(self.close_tag)
                if at >= 0:
                    reasoning.append(buf[:at])
                    buf = buf[at + len(self.close_tag) :]
                    self._state = "after_close"
                else:
                    keep = _partial_suffix(buf, self.close_tag)
                    reasoning.append(buf[: len(buf) - keep])
                    self._held = buf[len(buf) - keep :]
                    buf = ""
            elif self._state == "after_close":
                buf = buf.lstrip()
                if buf:
                    self._state = "content"
            else:
                content.append(buf)
                buf = ""
        return "".join(reasoning), "".join(content)

    def finish(self) -> tuple[str, str]:
        """What is still held back: an unclosed reasoning's cut tag is reasoning, anything else content."""
        held, self._held = self._held, ""
        if self._state == "reasoning":
            return held, ""
        if self._state == "start":
            return "", held
        return "", ""
