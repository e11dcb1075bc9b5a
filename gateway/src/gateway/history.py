"""The gateway's client of the history service: a session's recent messages, and storing an exchange.

Reads fail fast (the request waits for them); writes are retried, because a write that is lost loses
what a user sent or was told. Every stored message carries a message id fixed for its exchange, so a
retried write never stores a message twice (the history service treats a known id as done).
"""

from __future__ import annotations

from typing import Any

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from gateway.service_client import JsonService, ServiceUnavailable

__all__ = ["HistoryClient", "HistoryUnavailable"]


class HistoryUnavailable(ServiceUnavailable):
    """The history service could not be reached or answered with an error."""


class HistoryClient(JsonService):
    unavailable = HistoryUnavailable
    label = "history"

    def __init__(
        self, base_url: str, session: aiohttp.ClientSession, *, read_timeout_s: float = 5.0, write_attempts: int = 4
    ) -> None:
        super().__init__(base_url, session, timeout_s=read_timeout_s)
        self._write_attempts = write_attempts

    def _path(self, session_id: str, suffix: str = "/messages") -> str:
        return f"/v1/sessions/{session_id}{suffix}"

    async def recent(self, session_id: str, limit: int) -> list[dict[str, Any]]:
        """The session's last ``limit`` messages, oldest first (empty for a new session)."""
        if limit <= 0:
            return []
        data = await self.call("GET", self._path(session_id), params={"limit": str(limit)})
        return list(data["messages"])

    async def append(self, session_id: str, messages: list[dict[str, Any]]) -> None:
        """Store ``messages`` (each with a ``message_id``), retrying with backoff; raises when every try failed."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._write_attempts),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception_type(HistoryUnavailable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self.call("POST", self._path(session_id), json={"messages": messages})

    async def delete(self, session_id: str) -> int:
        data = await self.call("DELETE", self._path(session_id, ""))
        return int(data["deleted"])
