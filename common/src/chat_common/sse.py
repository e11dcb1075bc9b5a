"""Server-sent events as OpenAI streams them: ``data: {json}\\n\\n`` events ending with ``data: [DONE]``."""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import orjson
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

__all__ = ["DONE", "EVENT_END", "EventStreamResponse", "error_event", "event"]

DONE = b"data: [DONE]\n\n"
EVENT_END = b"\n\n"


def event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + EVENT_END


def error_event(message: str, *, type: str = "server_error", code: str | None = None) -> bytes:
    """The event that reports a failure after a stream has started; ``DONE`` must follow it."""
    return event({"error": {"message": message, "type": type, "param": None, "code": code}})


class EventStreamResponse(StreamingResponse):
    """An SSE response that runs ``on_close`` however it ends: finished, failed, or client gone.

    A streaming body's own ``finally`` does not run when the client leaves before its first chunk, so
    work tied to the stream (a generation, an upstream request) is released here instead.
    """

    def __init__(
        self,
        content: AsyncIterable[bytes],
        *,
        on_close: Callable[[], Awaitable[None] | None],
        status_code: int = 200,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            content,
            status_code=status_code,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
        )
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            result = self._on_close()
            if result is not None:
                await result
