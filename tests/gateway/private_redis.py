"""A private real Redis for tests that kill it: ``redis-server --port P --save ''`` on a free port, and a
gateway app of the tests' kind (:mod:`tests.gateway.fakes`) wired to a Redis client."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
from redis.asyncio import Redis
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.app import Gateway
from gateway.config import Settings
from tests.services import free_port

SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextmanager
def redis_server(*extra: str, password: str | None = None) -> Iterator[RedisServer]:
    """A redis-server of its own on a free port (``extra``: more of its options), killed on exit."""
    port = free_port()
    auth = ["--requirepass", password] if password else []
    process = subprocess.Popen(
        [SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", *auth, *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    server = RedisServer(f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0", process)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis.from_url(server.url, socket_timeout=1).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield server
    finally:
        server.kill()


def client_for(url: str) -> Redis:
    return Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)


def unique_prefix() -> str:
    return f"test:{uuid.uuid4().hex[:12]}:"


@dataclass
class FakeKey:
    """What authentication puts in ``scope["state"]["api_key"]`` (the ApiKey contract)."""

    id: str
    name: str = "test"
    models: list[str] = field(default_factory=list)
    rpm: int | None = None
    tpm: int | None = None
    expires_at: float | None = None


class WithKey:
    """Stands where authentication stands: sets the request's API key (from its ``X-Test-Key`` header)."""

    def __init__(self, app: ASGIApp, keys: dict[str, FakeKey]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            name = dict(scope["headers"]).get(b"x-test-key")
            scope.setdefault("state", {})["api_key"] = self.keys.get(name.decode()) if name else None
        await self.app(scope, receive, send)


@asynccontextmanager
async def app_on_redis(
    services: dict[str, list[str]],
    redis_client: Redis | None,
    prefix: str,
    *,
    keys: dict[str, FakeKey] | None = None,
    **settings: Any,
) -> AsyncIterator[ASGIApp]:
    """The real gateway app (lifespan running) with ``redis_client`` as its Redis and ``prefix`` on its keys."""
    app = Gateway(Settings(services=services, **settings))
    async with app.api.router.lifespan_context(app.api):
        app.api.state.redis = redis_client
        app.api.state.limiter.prefix = prefix
        app.api.state.cache.prefix = prefix
        yield WithKey(app, keys) if keys is not None else app


@asynccontextmanager
async def gateway_on_redis(
    services: dict[str, list[str]],
    redis_client: Redis | None,
    prefix: str,
    *,
    keys: dict[str, FakeKey] | None = None,
    **settings: Any,
) -> AsyncIterator[httpx.AsyncClient]:
    """:func:`app_on_redis` behind an in-process httpx client (which joins a streamed body's pieces)."""
    async with app_on_redis(services, redis_client, prefix, keys=keys, **settings) as app:
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
