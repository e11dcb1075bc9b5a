"""Scriptable model-service replicas for the gateway's tests: real HTTP servers on free local ports.

Each :class:`Replica` is an aiohttp web server that answers the paths it was given and records every
request it saw, so the gateway's real upstream client (pooling, timeouts, chunked streams, refused
connections) is what gets tested.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from aiohttp import web

from gateway.app import Gateway
from gateway.config import Settings
from tests.services import free_port


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[bytes] | None = None  # an SSE body, written piece by piece
    end: str = "done"  # how a streamed body ends: "done" (normally), "abort" (connection dropped), "hang"
    delay_s: float = 0.0


Handler = Callable[[Seen], Reply | Awaitable[Reply]]


def models(*ids: str, owner: str = "inference-gguf") -> Reply:
    return Reply(
        payload={"object": "list", "data": [{"id": i, "object": "model", "created": 0, "owned_by": owner} for i in ids]}
    )


def completion(content: str = "hello") -> Reply:
    return Reply(
        payload={
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )


def sse(events: list[bytes], end: str = "done") -> Reply:
    return Reply(events=events, end=end)


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    """One SSE chat-completion chunk event: a piece of text, or the end with its finish reason."""
    delta = {"content": content} if content is not None else {}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return b"data: " + orjson.dumps({"id": "c", "object": "chat.completion.chunk", "choices": [choice]}) + b"\n\n"


def model_replica(*, context_length: int = 8192, answer: str = "hello") -> Replica:
    """A replica serving model 'm1' with ``context_length`` in its card, answering ``answer`` (not streamed)."""
    card = {"id": "m1", "object": "model", "created": 0, "owned_by": "inference-gguf", "context_length": context_length}
    return (
        Replica()
        .on("/v1/models", lambda r: Reply(payload={"object": "list", "data": [card]}))
        .on("/v1/chat/completions", lambda r: completion(answer))
    )


class Replica:
    """One fake service replica. ``url`` is fixed at creation; the server runs between start and stop."""

    def __init__(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.url = f"http://{host}:{port or free_port()}"
        self.routes: dict[str, Handler] = {}
        self.seen: list[Seen] = []
        self._runner: web.AppRunner | None = None

    def on(self, path: str, handler: Handler) -> Replica:
        self.routes[path] = handler
        return self

    def chat_requests(self) -> list[Seen]:
        return [r for r in self.seen if r.path == "/v1/chat/completions"]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: a request's handler stops when its client leaves, as in the real services
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, int(self.url.rsplit(":", 1)[1])).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.path, dict(request.headers), await request.read())
        self.seen.append(seen)
        handler = self.routes.get(request.path)
        if handler is None:
            return web.json_response({"error": {"message": "no such route"}}, status=404)
        reply = handler(seen)
        if not isinstance(reply, Reply):
            reply = await reply
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.events is None:
            return web.Response(
                body=orjson.dumps(reply.payload),
                status=reply.status,
                headers={"Content-Type": "application/json", **reply.headers},
            )
        response = web.StreamResponse(
            status=reply.status, headers={"Content-Type": "text/event-stream", **reply.headers}
        )
        await response.prepare(request)
        for event in reply.events:
            await response.write(event)
            await asyncio.sleep(0.01)  # separate pieces on the wire
        if reply.end == "hang":
            await asyncio.sleep(3600)  # ends when the client closes the connection
        if reply.end == "abort":
            assert request.transport is not None
            request.transport.abort()
            return response
        await response.write_eof()
        return response


@asynccontextmanager
async def running(*replicas: Replica) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        for replica in replicas:
            await replica.start()
            stack.push_async_callback(replica.stop)
        yield


@asynccontextmanager
async def gateway(services: dict[str, list[str]], **settings: object) -> AsyncIterator[httpx.AsyncClient]:
    """The real gateway app (lifespan included) behind an in-process httpx client."""
    app = Gateway(Settings(services=services, **settings))  # type: ignore[arg-type]
    async with app.api.router.lifespan_context(app.api):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


def chat(model: str = "m1", **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def ask(question: str, **extra: object) -> bytes:
    """A chat request body for 'm1' with one user message."""
    return orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": question}], **extra})


def dead_url() -> str:
    """A local address where nothing listens: connections to it are refused."""
    return f"http://127.0.0.1:{free_port()}"


async def serve_to_a_client_that_leaves(app: Any, body: bytes, *, after_pieces: int = 2) -> list[bytes]:
    """POST ``body`` to ``app``'s chat route over raw ASGI, as a client that disconnects once ``after_pieces``
    body pieces reached it; the pieces it received. (Call inside the app's lifespan.)"""
    sent: list[dict[str, Any]] = []
    enough = asyncio.Event()
    incoming = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop()
        await enough.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if len([m for m in sent if m.get("body")]) == after_pieces:
            enough.set()

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [],
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("gateway", 80),
        "client": ("t", 1),
        "root_path": "",
    }
    await asyncio.wait_for(app(scope, receive, send), 10)
    return [m["body"] for m in sent if m.get("body")]
