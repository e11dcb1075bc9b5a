"""Rate limits: requests and tokens a minute, per API key and per model, counted in Redis.

Every gateway replica asks the same Redis, and one Lua script (loaded once per client, called by
EVALSHA) checks and charges all of a request's limits in one atomic step, so N replicas enforce one
limit exactly: no read-then-write race, no per-replica share.

The algorithm is GCRA (the generic cell rate algorithm, a leaky bucket kept as one number per limit,
its "theoretical arrival time"). Why not a sliding window: a sliding log is exact but keeps one entry
per request (a token limit would need one per token, or weighted entries and a sum on every check);
a sliding counter keeps two numbers but only approximates the window. GCRA is exact, O(1) in memory
and time, takes a weighted cost (a request's tokens) as easily as a cost of 1, and its state can be
moved by a signed amount, which is what correcting a token estimate with the real usage needs. A limit
of L a minute lets L units through at once from rest (the burst is one minute's worth) and then one
unit every 60/L seconds; N requests at once under a limit of N pass, the N+1st is refused.

Time is Redis's own (``TIME`` inside the script), so replicas with skewed clocks still agree.

Which limits apply to a request:

* its API key's own (``ApiKey.rpm``/``tpm``), across all models;
* the model's default (``GATEWAY_RATE_LIMITS``, model id or ``*`` -> ``{rpm, tpm}``), per key and model;
* without authentication (no key), only when ``GATEWAY_RATE_LIMIT_ANONYMOUS`` is set: that limit per
  client address, and the model defaults per client address.

Tokens are charged up front with the prompt's estimate (:mod:`gateway.tokens`) and corrected once the
answer is known: its ``usage.total_tokens``, or, for a stream without a usage chunk, the estimate plus
one token per text chunk relayed. An error answer gives its estimate back (the request still counts).

When Redis cannot be reached, ``GATEWAY_REDIS_FAILURE`` decides: ``open`` answers anyway (a warning in
the log, ``X-Switchboard-Ratelimit: unavailable`` on the answer), ``closed`` answers 503.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import orjson
from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError, ResponseError
from starlette.types import Scope

from chat_common.errors import APIError
from gateway.config import RateLimit
from gateway.resp import FastConnection, fast_connection_for
from gateway.tokens import estimate_messages

__all__ = [
    "UNAVAILABLE",
    "UNAVAILABLE_HEADER",
    "Admission",
    "Limiter",
    "RateLimit",
    "admit_chat",
    "reset_text",
    "whole_usage",
]

logger = logging.getLogger(__name__)

UNAVAILABLE_HEADER = (b"x-switchboard-ratelimit", b"unavailable")
WINDOW_MS = 60_000
_TEXT_DELTA = b'"delta":{"content":'
_USAGE = b'"usage":{'
_WARN_EVERY_S = 10.0

# The one script (limits.lua beside this module; its header says what it takes and returns).
_SCRIPT_FILE = Path(__file__).with_name("limits.lua")


@dataclass(frozen=True)
class _Limit:
    key: str  # the Redis key of its state
    kind: Literal["requests", "tokens"]
    per_minute: int
    what: str  # for the refusal's message, e.g. "the API key's"


def reset_text(ms: int) -> str:
    """A duration as OpenAI writes ``x-ratelimit-reset-*``: ``20ms``, ``1s``, ``8.64s``, ``6m0s``."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = round(ms / 1000, 3)
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


UNAVAILABLE: Any = object()  # Admission.cached when Redis could not be asked


@dataclass
class Admission:
    """A request's bookkeeping in Redis: the rate-limit headers for its answer, the cache entry read with
    the limits (``cached``: the stored bytes, None, or :data:`UNAVAILABLE`), and, once the answer has been
    sent, one call (:meth:`finish`) that corrects its token charge with the usage and writes its cache
    entry (``write``), if any."""

    limiter: Limiter | None = None
    redis: Redis | None = None
    token_limits: list[_Limit] = field(default_factory=list)
    estimate: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    cached: Any = None
    used: int | None = None  # tokens the answer used; None: none (an error: the estimate is given back)
    write: tuple[str, bytes] | None = None  # a cache entry to store: key, value
    write_ttl_ms: int = 0
    finished: bool = False

    def meter_whole(self, status: int, body: bytes) -> None:
        self.used = whole_usage(body) if status == 200 else None

    async def metered(self, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """Relay a stream's pieces unchanged, noting its tokens as they go: its usage chunk's, or the
        estimate plus one token per text chunk (so far, when it is cut short or the client leaves)."""
        usage: int | None = None
        self.used = self.estimate
        async for piece in pieces:
            if _USAGE in piece:
                usage = _stream_usage(piece) or usage
            self.used = usage if usage is not None else self.used + piece.count(_TEXT_DELTA)
            yield piece

    async def finish(self) -> None:
        """After the answer: correct the token charge and store the cache entry, in one call."""
        if self.finished or self.limiter is None or self.redis is None:
            self.finished = True
            return
        self.finished = True
        delta = (self.used or 0) - self.estimate
        if (self.token_limits and delta) or self.write is not None:
            limits = self.token_limits if delta else []
            await self.limiter.settle(self.redis, limits, delta, self.write, self.write_ttl_ms)


async def admit_chat(
    state: Any, scope: Scope, model: str, messages: list[dict[str, Any]], cache_key: str | None = None
) -> Admission:
    """Admit a chat request for ``model`` under the limits of its API key (``scope["state"]["api_key"]``,
    set by authentication; None or absent: no key) or client address, and read its cache entry
    (``cache_key``) in the same call; raises :class:`APIError` 429/503."""
    limiter: Limiter = state.limiter
    api_key = scope.get("state", {}).get("api_key")
    if api_key is None and limiter.anonymous is None and cache_key is None:
        return _NO_LIMITS
    client = scope.get("client")
    limits = limiter.limits(
        key_id=None if api_key is None else str(api_key.id),
        key_limit=None if api_key is None else RateLimit(rpm=api_key.rpm, tpm=api_key.tpm),
        client=client[0] if client else None,
        model=model,
    )
    if not limits and cache_key is None:
        return _NO_LIMITS
    return await limiter.admit(getattr(state, "redis", None), limits, estimate_messages(messages), cache_key)


_NO_LIMITS = Admission(finished=True)  # shared: nothing to settle, nothing read; never changed


class Limiter:
    """The limits of the settings, enforced in Redis. ``admit`` before the model call, ``Admission.settle``
    after the answer. Holds no connection: the caller passes the app's Redis client."""

    def __init__(
        self,
        models: dict[str, RateLimit],
        *,
        anonymous: RateLimit | None = None,
        failure: Literal["open", "closed"] = "open",
        prefix: str = "sb:rl:",
    ) -> None:
        self.models = models
        self.anonymous = anonymous
        self.failure = failure
        self.prefix = prefix
        self._source = _SCRIPT_FILE.read_text()
        self._sha = hashlib.sha1(self._source.encode()).hexdigest()
        self._scripts: dict[int, AsyncScript] = {}
        self._fast: dict[int, FastConnection | None] = {}
        self._warned = 0.0

    def limits(
        self, *, key_id: str | None, key_limit: RateLimit | None, client: str | None, model: str
    ) -> list[_Limit]:
        """The limits a request for ``model`` is under: by its key, or (no key) its client address."""
        if key_id is not None:
            subject, own, what = f"key:{key_id}", key_limit, "the API key's"
        elif self.anonymous is not None:
            subject, own, what = f"addr:{client or 'unknown'}", self.anonymous, "this client address's"
        else:
            return []
        found: list[_Limit] = []
        base = f"{self.prefix}{{{subject}}}"  # a hash tag: a subject's limits share one cluster slot
        if own is not None:
            if own.rpm:
                found.append(_Limit(f"{base}:r", "requests", own.rpm, what))
            if own.tpm:
                found.append(_Limit(f"{base}:t", "tokens", own.tpm, what))
        default = self.models.get(model) or self.models.get("*")
        if default is not None:
            what = f"the model '{model}''s"
            if default.rpm:
                found.append(_Limit(f"{base}:m:{model}:r", "requests", default.rpm, what))
            if default.tpm:
                found.append(_Limit(f"{base}:m:{model}:t", "tokens", default.tpm, what))
        return found

    async def _run(self, redis: Redis, keys: list[str], args: list[Any]) -> Any:
        """The script, by EVALSHA on the lean connection to ``redis``'s server (loaded again if Redis has
        forgotten it), or through ``redis`` itself where that connection cannot be had."""
        key = id(redis)
        if key not in self._fast:
            self._fast[key] = fast_connection_for(redis)
        fast = self._fast[key]
        if fast is None:
            script = self._scripts.get(key)
            if script is None:
                script = self._scripts[key] = redis.register_script(self._source)
            return await script(keys=keys, args=args)
        try:
            return await fast.call("EVALSHA", self._sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            await fast.call("SCRIPT", "LOAD", self._source)
            return await fast.call("EVALSHA", self._sha, len(keys), *keys, *args)

    def use(self, redis: Redis, fast: FastConnection | None) -> None:
        """Run the script on ``fast`` (shared with other hot-path calls) for ``redis``; None: on ``redis``."""
        self._fast[id(redis)] = fast

    def close(self) -> None:
        """Close the lean connections (the app's shutdown)."""
        for fast in self._fast.values():
            if fast is not None:
                fast.close()
        self._fast.clear()

    async def admit(
        self, redis: Redis | None, limits: list[_Limit], tokens: int, cache_key: str | None = None
    ) -> Admission:
        """Charge one request and ``tokens`` (the prompt's estimate) against ``limits``, and read the cache
        entry ``cache_key``, in one call; raises :class:`APIError` 429 (a limit is reached) or 503 (Redis
        unreachable and the policy is closed)."""
        if redis is None:
            return self._unavailable(limits, "no Redis is configured (GATEWAY_REDIS_URL)")
        args: list[Any] = ["admit", len(limits)]
        for limit in limits:
            args += [limit.per_minute, 1 if limit.kind == "requests" else tokens]
        keys = [limit.key for limit in limits]
        if cache_key is not None:
            keys.append(cache_key)
        try:
            result = await self._run(redis, keys, args)
        except (RedisError, OSError) as exc:
            return self._unavailable(limits, str(exc) or type(exc).__name__)
        views = [
            (limit, int(result[3 * i + 1]), int(result[3 * i + 2]), int(result[3 * i + 3]))
            for i, limit in enumerate(limits)
        ]
        headers = _headers(views)
        if not result[0]:
            raise _refusal(views, tokens, headers)
        token_limits = [limit for limit in limits if limit.kind == "tokens"]
        cached = result[3 * len(limits) + 1] if len(result) > 3 * len(limits) + 1 else None
        return Admission(self, redis, token_limits, tokens, headers, cached)

    async def settle(
        self, redis: Redis, limits: list[_Limit], delta: int, write: tuple[str, bytes] | None, ttl_ms: int
    ) -> None:
        """Move ``limits`` by ``delta`` tokens and store ``write`` (key, value) for ``ttl_ms``, in one call."""
        args: list[Any] = ["settle", len(limits)]
        for limit in limits:
            args += [limit.per_minute, delta]
        keys = [limit.key for limit in limits]
        if write is not None:
            keys.append(write[0])
            args += [write[1], ttl_ms]
        try:
            await self._run(redis, keys, args)
        except (RedisError, OSError) as exc:
            self._warn(f"token usage not corrected, answer not cached: {exc}")

    def _unavailable(self, limits: list[_Limit], reason: str) -> Admission:
        if not limits:  # only the cache was asked: answered from the model, nothing stored
            self._warn(f"response cache not read: Redis is unreachable ({reason})")
            return Admission(cached=UNAVAILABLE)
        if self.failure == "closed":
            raise APIError(
                503,
                f"Rate limits cannot be checked: Redis is unreachable ({reason}). Retry later; an operator can "
                "set GATEWAY_REDIS_FAILURE=open to answer without limits meanwhile.",
                code="ratelimit_unavailable",
                headers={"Retry-After": "2"},
            )
        self._warn(f"answering without rate limits: Redis is unreachable ({reason})")
        return Admission(headers=[UNAVAILABLE_HEADER], cached=UNAVAILABLE)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:  # one line per interval, not one per request
            self._warned = now
            logger.warning(message)


def _headers(views: list[tuple[_Limit, int, int, int]]) -> list[tuple[bytes, bytes]]:
    """OpenAI's ``x-ratelimit-*`` trio per kind, for the limit of that kind with the least remaining."""
    headers: list[tuple[bytes, bytes]] = []
    for kind in ("requests", "tokens"):
        of_kind = [v for v in views if v[0].kind == kind]
        if not of_kind:
            continue
        limit, remaining, reset_ms, _ = min(of_kind, key=lambda v: (v[1], -v[2]))
        headers += [
            (f"x-ratelimit-limit-{kind}".encode(), str(limit.per_minute).encode()),
            (f"x-ratelimit-remaining-{kind}".encode(), str(remaining).encode()),
            (f"x-ratelimit-reset-{kind}".encode(), reset_text(reset_ms).encode()),
        ]
    return headers


def _refusal(views: list[tuple[_Limit, int, int, int]], tokens: int, headers: list[tuple[bytes, bytes]]) -> APIError:
    limit, _, _, retry_ms = max((v for v in views if v[3] > 0), key=lambda v: v[3])
    fields = {name.decode(): value.decode() for name, value in headers}
    if limit.kind == "tokens" and tokens > limit.per_minute:
        return APIError(
            429,
            f"This request needs about {tokens} tokens, more than {limit.what} limit of {limit.per_minute} "
            "tokens a minute: send a shorter request, or ask for a higher limit.",
            code="rate_limit_exceeded",
            param="messages",
            headers=fields,
        )
    wait = max(1, math.ceil(retry_ms / 1000))
    fields["Retry-After"] = str(wait)
    return APIError(
        429,
        f"Rate limit reached: {limit.what} limit of {limit.per_minute} {limit.kind} a minute. Retry in {wait}s.",
        code="rate_limit_exceeded",
        headers=fields,
    )


def whole_usage(body: bytes) -> int | None:
    """``usage.total_tokens`` of a whole JSON answer, None when it has none."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return _total(payload.get("usage") if isinstance(payload, dict) else None)


def _stream_usage(events: bytes) -> int | None:
    """``usage.total_tokens`` of the (last) usage chunk among ``events``, complete SSE events."""
    at = events.rfind(_USAGE)
    start = events.rfind(b"\ndata: ", 0, at) + 1
    if not events.startswith(b"data: ", start):
        return None
    end = events.find(b"\n", at)
    return whole_usage(events[start + 6 : end])


def _total(usage: Any) -> int | None:
    if not isinstance(usage, dict):
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    return sum(p for p in parts if isinstance(p, int)) if any(isinstance(p, int) for p in parts) else None
