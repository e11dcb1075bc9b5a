"""How the response cache stores an answer in Redis (:mod:`gateway.cache`), and the recording of a stream.

An entry is bytes: ``W`` and a whole answer's body, or ``S``, the lengths of the stream's pieces as
relayed (decimal, comma-separated), a newline, and the pieces back to back. Replaying it gives the same
bytes with the same boundaries. Neither is parsed or re-encoded on the way in: a miss costs a join.
"""

from __future__ import annotations

from chat_common.sse import DONE, EVENT_END

__all__ = ["Recording", "decode", "stream_entry", "whole_entry"]

_WHOLE = b"W"
_STREAM = b"S"
_ERROR_EVENT = b'data: {"error"'


def whole_entry(body: bytes) -> bytes:
    return _WHOLE + body


def stream_entry(pieces: list[bytes]) -> bytes:
    return b"".join([_STREAM, b",".join([b"%d" % len(p) for p in pieces]), b"\n", *pieces])


def decode(entry: bytes) -> bytes | list[bytes] | None:
    """A whole answer's body, a stream's pieces, or None for an entry this gateway does not read."""
    kind = entry[:1]
    if kind == _WHOLE:
        return entry[1:]
    if kind != _STREAM:
        return None
    head, _, data = entry[1:].partition(b"\n")
    pieces = []
    at = 0
    for size in map(int, head.split(b",")):
        pieces.append(data[at : at + size])
        at += size
    return pieces


class Recording:
    """A stream's pieces kept as they are relayed, to be stored once it is complete. ``take`` each piece
    before it is sent; more than ``max_bytes`` stops the recording (nothing is stored); ``relayed`` is set
    once the last piece has been sent. A stream that ends with an error event (a service's or the
    gateway's, always the last event before ``[DONE]``) is not stored: only that event is looked at."""

    __slots__ = ("key", "max_bytes", "pieces", "relayed", "size", "storable", "ttl_ms")

    def __init__(self, key: bytes, ttl_ms: int, max_bytes: int) -> None:
        self.key = key
        self.ttl_ms = ttl_ms
        self.max_bytes = max_bytes
        self.pieces: list[bytes] = []
        self.size = 0
        self.storable = True
        self.relayed = False

    def take(self, piece: bytes) -> None:
        if not self.storable:
            return
        self.size += len(piece)
        if self.size > self.max_bytes:
            self.storable = False
            self.pieces = []
        else:
            self.pieces.append(piece)

    def entry(self) -> bytes | None:
        """The entry to store: None unless the client has had every piece and the last one ends with
        ``[DONE]``."""
        if not (self.relayed and self.storable and self.pieces and self.pieces[-1].endswith(DONE)):
            return None
        if _ends_with_error(self.pieces):
            return None
        return stream_entry(self.pieces)


def _ends_with_error(pieces: list[bytes]) -> bool:
    """Whether the event before the closing ``[DONE]`` is an error (complete SSE events: an event never spans
    two pieces). Searched in place: no copy of the answer."""
    last = pieces[-1]
    end = len(last) - len(DONE)  # where [DONE] starts
    if end <= 0 and len(pieces) > 1:
        last = pieces[-2]
        end = len(last)
    before = last.rfind(EVENT_END, 0, max(end - len(EVENT_END), 0))  # the end of the event before that one
    return last.startswith(_ERROR_EVENT, before + len(EVENT_END) if before >= 0 else 0)
