"""The lean Redis connection of the rate limits (gateway.resp) against private real redis-servers: the
script loaded again after Redis forgot it, a password and a database, a hung server timing out, and a
connection opened again after the server came back."""

from __future__ import annotations

import os
import signal

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, TimeoutError

from gateway.config import RateLimit
from gateway.limits import Limiter
from gateway.resp import fast_connection_for
from tests.gateway.private_redis import redis_server, unique_prefix


def _limiter() -> tuple[Limiter, list]:  # type: ignore[type-arg]
    limiter = Limiter({"m1": RateLimit(rpm=100)}, prefix=unique_prefix())
    return limiter, limiter.limits(key_id="k", key_limit=None, client=None, model="m1")


async def test_the_script_is_loaded_again_after_redis_forgets_it() -> None:
    limiter, limits = _limiter()
    with redis_server() as server:
        redis = Redis.from_url(server.url)
        first = await limiter.admit(redis, limits, 1)
        await redis.script_flush()
        second = await limiter.admit(redis, limits, 1)
        limiter.close()
        await redis.aclose()
    assert first.headers[1] == (b"x-ratelimit-remaining-requests", b"99")
    assert second.headers[1] == (b"x-ratelimit-remaining-requests", b"98")


async def test_a_password_and_a_database_are_used() -> None:
    limiter, limits = _limiter()
    with redis_server(password="s3cret") as server:
        url = server.url.rsplit("/", 1)[0] + "/3"
        redis = Redis.from_url(url)
        await limiter.admit(redis, limits, 1)
        stored = await redis.keys(f"{limiter.prefix}*")
        in_db0 = await Redis.from_url(server.url).keys("*")
        limiter.close()
        await redis.aclose()
    assert [k.decode() for k in stored] == [limits[0].key]
    assert in_db0 == []


async def test_a_hung_redis_fails_the_call_after_the_timeout_and_a_restarted_one_answers_again() -> None:
    with redis_server() as server:
        fast = fast_connection_for(Redis.from_url(server.url, socket_timeout=0.5))
        assert fast is not None
        assert await fast.call("PING") == b"PONG"
        os.kill(server.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(TimeoutError):
                await fast.call("PING")
        finally:
            os.kill(server.process.pid, signal.SIGCONT)
        assert await fast.call("PING") == b"PONG"  # a new connection
        server.kill()
        with pytest.raises(ConnectionError):
            await fast.call("PING")
        fast.close()


def test_tls_connections_are_left_to_redis_py() -> None:
    assert fast_connection_for(Redis.from_url("rediss://127.0.0.1:6380/0")) is None
    assert fast_connection_for(Redis.from_url("unix:///tmp/redis.sock")) is not None


def test_it_works_on_uvloop_the_servers_event_loop() -> None:
    """uvicorn runs the gateway on uvloop, whose transports are not asyncio's classes."""
    import uvloop

    async def admitted_twice(url: str) -> list[bytes]:
        limiter, limits = _limiter()
        redis = Redis.from_url(url)
        answers = [await limiter.admit(redis, limits, 1) for _ in range(2)]
        limiter.close()
        await redis.aclose()
        return [a.headers[1][1] for a in answers]

    with redis_server() as server:
        assert uvloop.run(admitted_twice(server.url)) == [b"99", b"98"]
