"""The interface every store implements, its one error, and the batch bookkeeping both stores share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Protocol

from history.messages import NewMessage, SessionInfo, StoredMessage, iso

__all__ = ["MessageStore", "StoreUnavailable", "in_request_order", "stamp", "to_store"]


class StoreUnavailable(Exception):
    """The database cannot be reached or cannot do the work; the message names the store and what to check.

    The HTTP layer answers it with 503 ``store_unavailable``. It never carries credentials.
    """

    def __init__(self, description: str, reason: str, hint: str) -> None:
        self.description = description
        self.reason = reason
        self.hint = hint
        super().__init__(f"The history store ({description}) is unavailable: {reason}. {hint}")


class MessageStore(Protocol):
    """Conversations and their messages.

    Every method raises :class:`StoreUnavailable` when the database fails, and
    :class:`history.messages.InvalidSessionId` for a malformed session id.
    """

    description: str
    """Which database this is, for logs and error messages (never with a password)."""

    async def append(self, session_id: str, messages: Sequence[NewMessage]) -> list[StoredMessage]:
        """Store ``messages`` at the end of the session, all or none, and return them in the order given.

        New messages get consecutive ``seq`` numbers following the session's last one, however many writers
        append at once. A message whose ``message_id`` is already stored in the session (or appears earlier in
        the same batch) is not stored again: the stored message takes its place in the result. Creates the
        session on its first message.
        """
        ...

    async def recent(self, session_id: str, limit: int, before_seq: int | None = None) -> list[StoredMessage]:
        """The last ``limit`` messages (with ``seq < before_seq`` when given), oldest first; ``[]`` for an
        unknown session."""
        ...

    async def sessions(self, limit: int, offset: int) -> list[SessionInfo]:
        """Sessions that hold messages, most recently appended to first (ties by session id)."""
        ...

    async def delete(self, session_id: str) -> int:
        """Delete the session and its messages; return how many messages went (0 for an unknown session).
        A later append starts again at ``seq`` 1."""
        ...

    async def ping(self) -> None:
        """Return when the database answers; raise :class:`StoreUnavailable` otherwise."""
        ...

    async def close(self) -> None:
        """Release connections. Other methods raise :class:`StoreUnavailable` afterwards."""
        ...


def to_store(batch: Iterable[NewMessage], stored_ids: Iterable[str]) -> list[NewMessage]:
    """The messages of ``batch`` that need storing: all without a ``message_id``, and the first of each id that
    is not in ``stored_ids``."""
    seen = set(stored_ids)
    fresh = []
    for message in batch:
        if message.message_id is None:
            fresh.append(message)
        elif message.message_id not in seen:
            seen.add(message.message_id)
            fresh.append(message)
    return fresh


def stamp(fresh: Sequence[NewMessage], first_seq: int, now: datetime) -> list[StoredMessage]:
    """``fresh`` as stored messages numbered ``first_seq, first_seq + 1, ...``, created at ``now``."""
    created_at = iso(now)
    return [
        StoredMessage(**message.model_dump(), seq=first_seq + i, created_at=created_at)
        for i, message in enumerate(fresh)
    ]


def in_request_order(
    batch: Sequence[NewMessage], existing: dict[str, StoredMessage], stored: Sequence[StoredMessage]
) -> list[StoredMessage]:
    """One stored message per message of ``batch``: by ``message_id`` from ``existing`` or ``stored``, and the
    messages without an id from ``stored`` in order (``stored`` is ``stamp(to_store(batch, existing))``)."""
    by_id = dict(existing)
    by_id.update((s.message_id, s) for s in stored if s.message_id is not None)
    anonymous = iter([s for s in stored if s.message_id is None])
    return [by_id[m.message_id] if m.message_id is not None else next(anonymous) for m in batch]
