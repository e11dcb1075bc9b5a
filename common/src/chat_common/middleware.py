"""Pure-ASGI middleware (no BaseHTTPMiddleware: it buffers and slows streaming responses)."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chat_common import context

__all__ = ["DISCOVERY_USER_AGENT", "RequestContextMiddleware"]

_HEADER = context.REQUEST_ID_HEADER.lower().encode()
_QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})
DISCOVERY_USER_AGENT = "switchboard-gateway-discovery"
"""The User-Agent of the gateway's periodic ``GET /v1/models`` on every service; logged at DEBUG like probes."""
_USER_AGENT = b"user-agent"
_DISCOVERY = DISCOVERY_USER_AGENT.encode()


class RequestContextMiddleware:
    """Accepts or generates ``X-Request-ID``, returns it, and writes one JSON access line per request.

    The access line carries route, status, latency_ms (until the last byte, streams included) and any
    fields the handler put into :func:`chat_common.context.access_fields` (such as ``model``).
    Probes (/health, /ready, /metrics) and the gateway's model discovery are logged at DEBUG so they do not
    drown the log.
    """

    def __init__(self, app: ASGIApp, logger_name: str = "access") -> None:
        self.app = app
        self.logger = logging.getLogger(logger_name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        quiet = scope["path"] in _QUIET_PATHS
        for name, value in scope["headers"]:
            if name == _HEADER:
                incoming = value.decode("latin-1")
            elif name == _USER_AGENT and value == _DISCOVERY:
                quiet = True
        rid = incoming if context.valid_request_id(incoming) else context.new_request_id()
        fields: dict[str, Any] = {}
        rid_token = context._request_id.set(rid)
        fields_token = context._access_fields.set(fields)
        started = time.perf_counter()
        status = 500
        rid_header = (_HEADER, rid.encode())

        def send_with_id(message: Message) -> Awaitable[None]:
            # A plain function handing back send's awaitable: no extra coroutine per message of a stream.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            return send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            level = logging.DEBUG if quiet and status < 400 else logging.INFO
            if self.logger.isEnabledFor(level):
                self.logger.log(
                    level,
                    "request",
                    extra={
                        "method": scope["method"],
                        "route": scope["path"],
                        "status": status,
                        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                        **fields,
                    },
                )
            context._access_fields.reset(fields_token)
            context._request_id.reset(rid_token)
