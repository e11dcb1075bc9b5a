"""The lean Redis connection of the rate limits (gateway.resp) and the ledger's calls on it (gateway.ledger)
against real Redis servers (private ones of the tests, tests/conftest.py): the script loaded again after
Redis forgot it, a password and a database, a hung server timing out, a connection opened again after it
broke, and uvloop (the server's loop)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, TimeoutError

from gateway.api_keys import ApiKey
from gateway.config import RateLimit
from gateway.ledger import Ledger
from gateway.limits import Limiter, Plan
from gateway.resp import fast_connection_for
from scripts.local_redis import LocalRedis

Start = Callable[[], LocalRedis]
KEY = ApiKey("k", "test", None, None, None, None)


def _limiter(redis: Redis, prefix: str = "resp-test:") -> tuple[Limiter, Plan]:
    """A limit of 100 requests a minute on model m1, charged through a ledger on the lean connection."""
    limiter = Limiter({"m1": RateLimit(rpm=100)}, prefix=prefix)
    limiter.ledger = Ledger(redis, fast_connection_for(redis))
    assert limiter.ledger.fast is not None
    plan = limiter.plan(KEY, None, "m1")
    assert plan is not None
    return limiter, plan


def _close(limiter: Limiter) -> None:
    assert limiter.ledger is not None and limiter.ledger.fast is not None
    limiter.ledger.fast.close()


async def test_the_script_is_loaded_again_after_redis_forgets_it(private_redis: Start) -> None:
    redis = Redis.from_url(private_redis().url)
    limiter, plan = _limiter(redis)
    first = await limiter.admit(plan, 1)
    await redis.script_flush()
    second = await limiter.admit(plan, 1)
    _close(limiter)
    await redis.aclose()
    assert first.headers[1] == (b"x-ratelimit-remaining-requests", b"99")
    assert second.headers[1] == (b"x-ratelimit-remaining-requests", b"98")


async def test_a_password_and_a_database_are_used(private_redis: Start) -> None:
    server = private_redis()
    await Redis.from_url(server.url).config_set("requirepass", "s3cret")
    base = server.url.replace("redis://", "redis://:s3cret@").rsplit("/", 1)[0]
    redis, db0 = Redis.from_url(base + "/3"), Redis.from_url(base + "/0")
    limiter, plan = _limiter(redis)
    await limiter.admit(plan, 1)
    stored = await redis.keys(f"{limiter.prefix}*")
    in_db0 = await db0.keys("*")
    _close(limiter)
    await redis.aclose()
    await db0.aclose()
    assert [k.decode() for k in stored] == [plan.limits[0].state.key.decode()]
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
        redis = Redis.from_url(redis_url)
        limiter, plan = _limiter(redis, redis_prefix)
        answers = [await limiter.admit(plan, 1) for _ in range(2)]
        _close(limiter)
        await redis.aclose()
        return [a.headers[1][1] for a in answers]

    assert uvloop.run(admitted_twice()) == [b"99", b"98"]
