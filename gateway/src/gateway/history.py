"""The gateway's client of the history service: a session's recent messages, and storing an exchange.

Reads fail fast (the request waits for them); writes are retried, because a write that is lost loses
what a user sent or was told. Every stored message carries a message id fixed for its exchange, so a
retried write never stores a message twice (the history service treats a known id as done).
"""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from gateway.registry import describe_error

__all__ = ["HistoryClient", "HistoryUnavailable"]

logger = logging.getLogger(__name__)


class HistoryUnavailable(Exception):
    """The history service could not be reached or answered with an error."""


class HistoryClient:
    def __init__(self, base_url: str, session: aiohttp.ClientSession, *, read_timeout_s: float = 5.0,
                 write_attempts: int = 4) -> None:
        self.base_url = base_url
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=read_timeout_s)
        self._write_attempts = write_attempts

    def _url(self, session_id: str, suffix: str = "/messages") -> str:
        return f"{self.base_url}/v1/sessions/{session_id}{suffix}"

    async def recent(self, session_id: str, limit: int) -> list[dict[str, Any]]:
        """The session's last ``limit`` messages, oldest first (empty for a new session)."""
        if limit <= 0:
            return []
        data = await self._call("GET", self._url(session_id), params={"limit": str(limit)})
        return list(data["messages"])

    async def append(self, session_id: str, messages: list[dict[str, Any]]) -> None:
        """Store ``messages`` (each with a ``message_id``), retrying with backoff; raises when every try failed."""
        retrying = AsyncRetrying(stop=stop_after_attempt(self._write_attempts),
                                 wait=wait_exponential(multiplier=0.2, max=2.0),
                                 retry=retry_if_exception_type(HistoryUnavailable), reraise=True)
        async for attempt in retrying:
            with attempt:
                await self._call("POST", self._url(session_id), json={"messages": messages})

    async def delete(self, session_id: str) -> int:
        data = await self._call("DELETE", self._url(session_id, ""))
        return int(data["deleted"])

    async def ready(self) -> bool:
        try:
            async with self._session.get(f"{self.base_url}/ready", timeout=self._timeout) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self._session.request(method, url, timeout=self._timeout, **kwargs) as response:
                if response.status >= 500:
                    raise HistoryUnavailable(f"the history service answered {response.status}: "
                                             f"{_message(await response.read())}")
                data: dict[str, Any] = await response.json(content_type=None)
                if response.status >= 400:  # a request the gateway should not have made: not retried
                    raise ValueError(f"history service refused {method} {url}: {_message(data)}")
                return data
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise HistoryUnavailable(f"{self.base_url}: {describe_error(exc)}") from exc


def _message(payload: Any) -> str:
    if isinstance(payload, bytes):
        return payload[:300].decode(errors="replace")
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message"))
    return str(payload)[:300]
