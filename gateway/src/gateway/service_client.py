"""A small JSON client for the gateway's helper services (history, retriever).

A failure to reach a service, or a 5xx from it, raises the client's ``unavailable`` exception (the
gateway answers 503 or degrades as configured); a 4xx raises :class:`ServiceRefused` with the service's
own message, because it means the request (or the gateway) asked for something the service refuses.
Every call carries the request's ``X-Request-ID``, as the calls to model services do, so one id follows a
request through every service's log.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from chat_common.context import REQUEST_ID_HEADER, request_id
from gateway.discovery import AddressPool
from gateway.registry import describe_error

__all__ = ["JsonService", "ServiceRefused", "ServiceUnavailable"]


# Failures after which another address of the service is asked.
_MOVE_ON = (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)  # refused, reset, or a closed pooled one


class ServiceUnavailable(Exception):
    """The service could not be reached or answered with a server error."""


class ServiceRefused(ValueError):
    """The service answered 4xx; ``message``, ``code`` and ``param`` are its own."""

    def __init__(self, status: int, message: str, code: str | None, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


class JsonService:
    unavailable: type[ServiceUnavailable] = ServiceUnavailable
    label = "service"

    def __init__(self, base_url: str, session: aiohttp.ClientSession, *, timeout_s: float) -> None:
        self.base_url = base_url
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Set by the app: the addresses base_url's name resolves to (a scaled service), asked in turn.
        self.pool: AddressPool | None = None

    async def ready(self) -> bool:
        try:
            async with self._session.get(
                f"{self.base_url}/ready", timeout=self._timeout, headers=_request_headers()
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    async def call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """One request to the service: to the next of its addresses in turn (:attr:`pool`), and to the
        following ones while a connection is refused or a pooled one turns out closed (the container went
        away). Moving on is safe for what the gateway asks of these services: searches and reads, and
        history writes, which carry fixed message ids."""
        bases = self.pool.order() if self.pool is not None else [self.base_url]
        for base in bases[:-1]:
            try:
                return await self._call(base, method, path, **kwargs)
            except self.unavailable as exc:
                if not isinstance(exc.__cause__, _MOVE_ON):
                    raise
        return await self._call(bases[-1], method, path, **kwargs)

    async def _call(self, base_url: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self._session.request(
                method, base_url + path, timeout=self._timeout, headers=_request_headers(), **kwargs
            ) as response:
                if response.status >= 500:
                    raise self.unavailable(
                        f"the {self.label} service answered {response.status}: {_message(await response.read())}"
                    )
                data: dict[str, Any] = await response.json(content_type=None)
                if response.status >= 400:
                    error = data.get("error") if isinstance(data, dict) else None
                    code = error.get("code") if isinstance(error, dict) else None
                    param = error.get("param") if isinstance(error, dict) else None
                    raise ServiceRefused(response.status, _message(data), code, param)
                return data
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            if isinstance(exc, ServiceRefused):
                raise
            raise self.unavailable(f"{base_url}: {describe_error(exc)}") from exc


def _request_headers() -> dict[str, str]:
    rid = request_id()
    return {REQUEST_ID_HEADER: rid} if rid else {}


def _message(payload: Any) -> str:
    if isinstance(payload, bytes):
        return payload[:300].decode(errors="replace")
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message"))
    return str(payload)[:300]
