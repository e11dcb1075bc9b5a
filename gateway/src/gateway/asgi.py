"""Bare-ASGI helpers for the gateway's hot path (the chat route skips FastAPI's request wrapping)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope

from chat_common.errors import APIError

__all__ = ["cancel_on_disconnect", "read_body"]


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to be larger than ``limit`` bytes.

    Raises :class:`starlette.requests.ClientDisconnect` if the client leaves while sending it.
    """
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit() and int(value) > limit:
            raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> APIError:
    return APIError(
        413, f"The request body is larger than {limit} bytes (GATEWAY_MAX_BODY_BYTES).", code="request_too_large"
    )


@asynccontextmanager
async def cancel_on_disconnect(receive: Receive) -> AsyncIterator[Callable[[], bool]]:
    """Cancel the enclosed work when the client disconnects; yields "has the client gone?".

    Call after the body has been read. The cancellation reaches whatever the block awaits (connecting
    upstream, waiting for a whole answer, relaying a stream) and aiohttp drops the upstream connection,
    which is how a service learns to stop generating. The block then ends quietly: nobody is left to
    answer. One watcher task per request, whatever the block does.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    async def watch() -> None:
        nonlocal gone
        while (await receive())["type"] != "http.disconnect":
            pass
        gone = True
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        yield lambda: gone
    except asyncio.CancelledError:
        if not gone:
            raise
        task.uncancel()
    finally:
        watcher.cancel()
