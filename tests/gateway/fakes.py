"""A scriptable upstream at the httpx transport boundary, for the gateway's unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx2 as httpx
import orjson
from fastapi import FastAPI

from gateway.app import create_app
from gateway.config import Settings

Handler = Callable[[httpx.Request], httpx.Response]


def models(*ids: str, owner: str = "inference-gguf") -> httpx.Response:
    return httpx.Response(200, json={"object": "list", "data": [
        {"id": i, "object": "model", "created": 0, "owned_by": owner} for i in ids]})


class Upstream:
    """Routes by (host, path); records every request it saw."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Handler] = {}
        self.seen: list[httpx.Request] = []

    def on(self, url: str, handler: Handler) -> None:
        request = httpx.Request("GET", url)
        self.routes[(request.url.netloc.decode(), request.url.path)] = handler

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        handler = self.routes.get((request.url.netloc.decode(), request.url.path))
        if handler is None:
            raise httpx.ConnectError("connection refused", request=request)
        return handler(request)

    def chat_requests(self) -> list[httpx.Request]:
        return [r for r in self.seen if r.url.path == "/v1/chat/completions"]


@asynccontextmanager
async def gateway(upstream: Upstream, services: dict[str, list[str]], **settings: object
                  ) -> AsyncIterator[httpx.AsyncClient]:
    app: FastAPI = create_app(Settings(services=services, **settings),  # type: ignore[arg-type]
                              transport=httpx.MockTransport(upstream))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


def chat(model: str = "m1", **extra: object) -> bytes:
    return orjson.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], **extra})


def completion(content: str = "hello") -> httpx.Response:
    return httpx.Response(200, json={"id": "c", "object": "chat.completion", "created": 0, "model": "m1",
                                     "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                                  "finish_reason": "stop"}],
                                     "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
