"""The gateway's Redis client: opened in the FastAPI lifespan, kept on ``app.state.redis``.

``app.state.redis`` is a :class:`redis.asyncio.Redis` answering bytes (``decode_responses=False``), or
None when ``GATEWAY_REDIS_URL`` is empty. A Redis that does not answer at start does not stop the
gateway: the client reconnects by itself, and what needs it (API keys, rate limits, the response cache)
meets :data:`REDIS_ERRORS` until then and answers 503 (or its own policy). Every key the gateway writes
starts with ``GATEWAY_REDIS_PREFIX``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from gateway.config import Settings

__all__ = ["REDIS_ERRORS", "open_redis", "redacted"]

logger = logging.getLogger(__name__)

REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError, TimeoutError)
"""What a Redis call raises when the server is down, unreachable, slow or refuses: catch these."""


def redacted(url: str) -> str:
    """The URL with any password replaced by ``***``, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


def client(settings: Settings) -> Redis:
    """A client for ``GATEWAY_REDIS_URL`` (not connected yet: it connects on its first command)."""
    assert settings.redis_url is not None
    return Redis.from_url(
        settings.redis_url,
        decode_responses=False,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        # One immediate retry: a pooled connection that a Redis restart closed is replaced at once, and a
        # dead server is reported within about two timeouts instead of after a backoff.
        retry=Retry(NoBackoff(), 1),
        retry_on_timeout=False,
    )


@asynccontextmanager
async def open_redis(settings: Settings) -> AsyncIterator[Redis | None]:
    """The Redis client for the app's lifetime (None without ``GATEWAY_REDIS_URL``); closed at the end."""
    if settings.redis_url is None:
        logger.info("redis: not configured (GATEWAY_REDIS_URL is empty): no API keys, limits or cache")
        yield None
        return
    redis = client(settings)
    shown = redacted(settings.redis_url)
    try:
        info = await redis.info("server")
        version = info.get("valkey_version") or info.get("redis_version") or "?"
        logger.info("redis: connected to %s (server %s), key prefix %r", shown, version, settings.redis_prefix)
    except REDIS_ERRORS as exc:
        logger.error(
            "redis: %s does not answer (%s). The gateway starts anyway; requests that need Redis (API keys) "
            "answer 503 until it does. Start Redis there or fix GATEWAY_REDIS_URL.",
            shown,
            exc,
        )
    try:
        yield redis
    finally:
        await redis.aclose()
