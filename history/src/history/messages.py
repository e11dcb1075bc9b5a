"""What the service stores: messages as clients send them, as they are stored, and session summaries.

These models are the wire format of the HTTP API and the values the stores return, so both stores answer
byte-for-byte the same JSON. Timestamps are UTC ISO 8601 strings with millisecond precision and a ``Z``
(``2025-01-31T12:00:00.123Z``): MongoDB dates hold milliseconds, so SQLite keeps no more than that.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "MAX_BATCH",
    "InvalidSessionId",
    "NewMessage",
    "SessionInfo",
    "StoredMessage",
    "check_session_id",
    "iso",
    "utc_now",
]

MAX_BATCH = 100
"""Most messages one append may carry."""

_SESSION_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


class InvalidSessionId(ValueError):
    """A session id that is not 1-128 characters of ``A-Z a-z 0-9 . _ : -``."""


def check_session_id(session_id: str) -> str:
    """Return ``session_id`` unchanged, or raise :class:`InvalidSessionId` with a message a client can act on."""
    if not isinstance(session_id, str) or _SESSION_ID.fullmatch(session_id) is None:
        raise InvalidSessionId(
            f"Invalid session id {session_id[:140]!r}: use 1-128 characters of A-Z a-z 0-9 . _ : -"
            if isinstance(session_id, str)
            else "The session id must be a string."
        )
    return session_id


def utc_now() -> datetime:
    """The current UTC time, truncated to milliseconds (what a MongoDB date can hold)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def iso(moment: datetime) -> str:
    """``moment`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ``; a naive datetime is taken to be UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class NewMessage(BaseModel):
    """One message to append. Unknown fields are refused (400) rather than silently dropped: a storage API
    that loses what it was given is worse than one that says so; extra data belongs in ``metadata``."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"] = Field(description="Who wrote the message.")
    content: str = Field(description="The message text.")
    model: str | None = Field(None, max_length=256, description="Model that wrote an assistant message.")
    prompt_tokens: int | None = Field(None, ge=0, description="Prompt tokens of the request that produced it.")
    completion_tokens: int | None = Field(None, ge=0, description="Tokens generated for it.")
    request_id: str | None = Field(None, max_length=128, description="X-Request-ID of the request behind it.")
    message_id: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        description="Client-chosen id, unique within the session: appending it again returns the stored "
        "message instead of storing a second copy (safe retries).",
    )
    status: Literal["complete", "interrupted"] = Field(
        "complete", description="'interrupted' marks an assistant answer cut short by a client disconnect."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Free JSON object, stored as given.")


class StoredMessage(NewMessage):
    """A message as stored: what was sent, plus the server's ``seq`` and ``created_at``."""

    seq: int = Field(ge=1, description="Position in the session: 1, 2, 3... in the order of appends.")
    created_at: str = Field(description="When it was stored (UTC, ISO 8601).")


class SessionInfo(BaseModel):
    """One conversation: how many messages it holds, when it began and when it last grew."""

    session_id: str
    message_count: int
    created_at: str
    updated_at: str
