"""The lean Redis connection of the rate limits (gateway.resp) against real Redis servers (private ones of
the tests, tests/conftest.py): the script loaded again after Redis forgot it, a password and a database,
a hung server timing out, a connection opened again after it broke, and uvloop (the server's loop)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, TimeoutError

from gateway.config import RateLimit
from gateway.limits import Limiter, _Limit
from gateway.resp import fast_connection_for
from scripts.local_redis import LocalRedis

Start = Callable[[], LocalRedis]


def _limiter(prefix: str = "resp-test:") -> tuple[Limiter, list[_Limit]]:
    limiter = Limiter({"m1": RateLimit(rpm=100)}, prefix=prefix)
    return limiter, limiter.limits(key_id="k", key_limit=None, client=None, model="m1")


async def test_the_script_is_loaded_again_after_redis_forgets_it(private_redis: Start) -> None:
    limiter, limits = _limiter()
    redis = Redis.from_url(private_redis().url)
    first = await limiter.admit(redis, limits, 1)
    await redis.script_flush()
    second = await limiter.admit(redis, limits, 1)
    limiter.close()
    await redis.aclose()
    assert first.headers[1] == (b"x-ratelimit-remaining-requests", b"99")
    assert second.headers[1] == (b"x-ratelimit-remaining-requests", b"98")


async def test_a_password_and_a_database_are_used(private_redis: Start) -> None:
    limiter, limits = _limiter()
    server = private_redis()
    await Redis.from_url(server.url).config_set("requirepass", "s3cret")
    base = server.url.replace("redis://", "redis://:s3cret@").rsplit("/", 1)[0]
    redis, db0 = Redis.from_url(base + "/3"), Redis.from_url(base + "/0")
    await limiter.admit(redis, limits, 1)
    stored = await redis.keys(f"{limiter.prefix}*")
    in_db0 = await db0.keys("*")
    limiter.close()
    await redis.aclose()
    await db0.aclose()
    assert [k.decode() for k in stored] == [limits[0].key]
    assert in_db0 == []


async def test_a_hung_redis_fails_the_call_after_the_timeout_and_a_restarted_one_answers_again(
    private_redis: Start,
) -> None:
    server = private_redis()
    assert server.process is not None
    fast = fast_connection_for(Redis.from_url(server.url, socket_timeout=0.5))
    assert fast is not None
    assert await fast.call("PING") == b"PONG"
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(TimeoutError):
            await fast.call("PING")
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    assert await fast.call("PING") == b"PONG"  # on a new connection
    server.stop()
    with pytest.raises(ConnectionError):
        await fast.call("PING")
    fast.close()


def test_tls_connections_are_left_to_redis_py() -> None:
    assert fast_connection_for(Redis.from_url("rediss://127.0.0.1:6380/0")) is None
    assert fast_connection_for(Redis.from_url("unix:///tmp/redis.sock")) is not None


def test_it_works_on_uvloop_the_servers_event_loop(redis_url: str, redis_prefix: str) -> None:
    """uvicorn runs the gateway on uvloop, whose transports are not asyncio's classes."""
    import uvloop

    async def admitted_twice() -> list[bytes]:
        limiter, limits = _limiter(redis_prefix)
        redis = Redis.from_url(redis_url)
        answers = [await limiter.admit(redis, limits, 1) for _ in range(2)]
        limiter.close()
        await redis.aclose()
        return [a.headers[1][1] for a in answers]

    assert uvloop.run(admitted_twice()) == [b"99", b"98"]
