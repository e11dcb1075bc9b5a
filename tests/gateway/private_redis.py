"""Helpers of the rate-limit and cache tests: the real gateway app on a real Redis (the session's
private server, tests/conftest.py), with real API keys created in it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from redis.asyncio import Redis
from starlette.types import ASGIApp, Message

from gateway.api_keys import KeyStore
from gateway.app import Gateway
from gateway.config import Settings
from scripts.local_redis import LocalRedis
from tests.gateway.fakes import Replica, running


async def create_key(redis_url: str, prefix: str, name: str, **limits: Any) -> str:
    """A real API key in Redis (``limits``: rpm, tpm, models); its secret."""
    redis = Redis.from_url(redis_url)
    try:
        _, secret = await KeyStore(redis, prefix).create(name, **limits)
    finally:
        await redis.aclose()
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@asynccontextmanager
async def app_on_redis(
    services: dict[str, list[str]], redis_url: str, prefix: str, **settings: Any
) -> AsyncIterator[ASGIApp]:
    """The real gateway app (lifespan running) on ``redis_url`` (GATEWAY_REDIS_URL), keys under ``prefix``."""
    app = Gateway(Settings(services=services, redis_url=redis_url, redis_prefix=prefix, **settings))
    async with app.api.router.lifespan_context(app.api):
        yield app


@asynccontextmanager
async def gateway_on_redis(
    services: dict[str, list[str]], redis_url: str, prefix: str, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """:func:`app_on_redis` behind an in-process httpx client (which joins a streamed body's pieces)."""
    async with app_on_redis(services, redis_url, prefix, **settings) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


async def asgi_post(app: ASGIApp, path: str, body: bytes) -> tuple[dict[str, str], list[bytes]]:
    """POST ``body`` straight to the ASGI app: the response's headers and its body messages, one per piece
    sent (httpx's ASGI transport joins them)."""
    messages: list[Message] = []
    incoming = [{"type": "http.request", "body": body, "more_body": False}]
    done = asyncio.Event()

    async def receive() -> Message:
        if incoming:
            return incoming.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    scope = {"type": "http", "method": "POST", "path": path, "headers": [], "query_string": b"", "client": ("t", 1)}
    await asyncio.wait_for(app(scope, receive, send), 10)
    start = next(m for m in messages if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return headers, [m["body"] for m in messages if m["type"] == "http.response.body" and m.get("body")]


@asynccontextmanager
async def gateway_for(
    replica: Replica, redis_url: str, prefix: str, **settings: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """:func:`gateway_on_redis` in front of one scripted model ``replica``, running meanwhile."""
    services = {"inference-gguf": [replica.url]}
    async with running(replica), gateway_on_redis(services, redis_url, prefix, **settings) as client:
        yield client


def kill(redis: LocalRedis) -> None:
    """Kill a test's own Redis outright (a Redis that dies mid-run)."""
    assert redis.process is not None
    redis.process.kill()
    redis.process.wait()
