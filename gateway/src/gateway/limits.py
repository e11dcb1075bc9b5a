"""Rate limits: requests and tokens a minute, per API key and per model, counted in Redis.

Every gateway replica asks the same Redis, and one Lua script (``limits.lua``, called by EVALSHA)
checks and charges all of a request's limits in one atomic step, so N replicas enforce one limit
exactly: no read-then-write race, no fixed per-replica share. The calls are batched, many requests to a
call (:mod:`gateway.ledger`), and a busy subject under large limits is admitted from a lease its replica
took ahead, with no call at all (:mod:`gateway.leases`: a share taken from the one limit in Redis, never
more than it).

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

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from starlette.types import Scope

from chat_common.errors import APIError
from gateway.cache_entry import Recording
from gateway.config import RateLimit
from gateway.leases import Lease, LeaseBook, correct_locally
from gateway.ledger import Ledger, LimitKey
from gateway.redis_state import REDIS_ERRORS
from gateway.tokens import estimate_messages, usage_total

__all__ = [
    "UNAVAILABLE",
    "UNAVAILABLE_HEADER",
    "Admission",
    "Limiter",
    "Plan",
    "RateLimit",
    "admit_chat",
    "reset_text",
    "whole_usage",
]

logger = logging.getLogger(__name__)

UNAVAILABLE_HEADER = (b"x-switchboard-ratelimit", b"unavailable")
_TEXT_DELTA = b'"delta":{"content":'
_WARN_EVERY_S = 10.0
_MAX_PLANS = 10_000


@dataclass(frozen=True)
class _Limit:
    state: LimitKey  # its key in Redis, its limit a minute, its cost
    kind: Literal["requests", "tokens"]
    what: str  # for the refusal's message, e.g. "the API key's"

    @property
    def per_minute(self) -> int:
        return self.state.per_minute


_HEADER_NAMES = {
    kind: tuple(f"x-ratelimit-{part}-{kind}".encode() for part in ("limit", "remaining", "reset"))
    for kind in ("requests", "tokens")
}


class Plan:
    """The limits one subject (API key or client address) is under for one model, prepared once: what the
    ledger charges, which of them count tokens, their leases (:mod:`gateway.leases`; empty: not leased), and
    how their headers are written."""

    __slots__ = ("admitted_at", "by_kind", "leases", "limits", "states", "token_leases", "token_states")

    def __init__(self, limits: list[_Limit], leases: tuple[Lease, ...] = ()) -> None:
        self.limits = limits
        self.states = tuple(limit.state for limit in limits)
        self.token_states = tuple(limit.state for limit in limits if limit.kind == "tokens")
        self.leases = leases
        self.token_leases = tuple(lease for lease in leases if lease.tokens)
        self.admitted_at = -math.inf  # when a request of this plan was last admitted
        # per kind present: (its limit's header, then the names of the remaining and reset headers, the index
        # of its remaining count in the script's row) for each of its limits
        self.by_kind = [
            [
                ((names[0], b"%d" % limit.per_minute), names[1], names[2], 4 * i + 1)
                for i, limit in enumerate(limits)
                if limit.kind == kind
            ]
            for kind, names in _HEADER_NAMES.items()
            if any(limit.kind == kind for limit in limits)
        ]

    def headers(self, row: list[Any]) -> list[tuple[bytes, bytes]]:
        """OpenAI's ``x-ratelimit-*`` trio per kind, for the limit of that kind with the least remaining (the
        latest reset among equals)."""
        headers: list[tuple[bytes, bytes]] = []
        for of_kind in self.by_kind:
            first, remaining_name, reset_name, at = of_kind[0]
            for other in of_kind[1:]:
                if (row[other[3]], -row[other[3] + 1]) < (row[at], -row[at + 1]):
                    first, remaining_name, reset_name, at = other
            reset = row[at + 1]
            headers += [
                first,
                (remaining_name, b"%d" % row[at]),
                (reset_name, _SUBSECOND[reset] if 0 <= reset < 1000 else reset_text(reset).encode()),
            ]
        return headers


def reset_text(ms: int) -> str:
    """A duration as OpenAI writes ``x-ratelimit-reset-*``: ``20ms``, ``1s``, ``8.64s``, ``6m0s``."""
    if ms < 1000:
        return f"{max(ms, 0)}ms"
    seconds = round(ms / 1000, 3)
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


_SUBSECOND = [reset_text(ms).encode() for ms in range(1000)]  # the common case, written once

UNAVAILABLE: Any = object()  # Admission.cached when Redis could not be asked


class Admission:
    """A request's bookkeeping in Redis: the rate-limit headers for its answer, the cache entry read with
    the limits (``cached``: the stored bytes, None, or :data:`UNAVAILABLE`), and, once the answer has been
    sent, :meth:`finish`, which hands the ledger its token correction and its cache entry (``write``: a
    whole answer's; ``recording``: a stream's, kept as it is relayed).

    A streamed answer is metered as it is relayed (:meth:`piece` for each piece sent, :meth:`relayed` at
    its end: the :class:`gateway.proxy.EventStream` calls them, a method call per piece rather than one more
    generator layer): its usage chunk's tokens, or the estimate plus one token per text chunk (so far, when
    it is cut short or the client leaves). Each piece is scanned once here (the text chunks); the relay
    finds the usage chunk, and the cache's recording checks for an error only at the end."""

    __slots__ = (
        "blocks",
        "cached",
        "estimate",
        "finished",
        "headers",
        "leases",
        "ledger",
        "recording",
        "token_states",
        "used",
        "write",
    )

    def __init__(
        self,
        ledger: Ledger | None = None,
        token_states: tuple[LimitKey, ...] = (),
        estimate: int = 0,
        headers: list[tuple[bytes, bytes]] | None = None,
        cached: Any = None,
        *,
        finished: bool = False,
        leases: tuple[Lease, ...] = (),
    ) -> None:
        self.ledger = ledger
        self.token_states = token_states
        self.leases = leases  # of its token limits: its correction is made on them when they can take it
        self.blocks = tuple([lease.block for lease in leases])  # the blocks it was admitted from
        self.estimate = estimate
        self.headers = headers or []
        self.cached = cached
        self.used: int | None = None  # tokens the answer used; None: none (an error: the estimate is given back)
        self.write: tuple[bytes, bytes, int] | None = None  # a cache entry to store: key, value, TTL in ms
        self.recording: Recording | None = None
        self.finished = finished

    def meter_whole(self, status: int, body: bytes) -> None:
        self.used = whole_usage(body) if status == 200 else None

    def piece(self, piece: bytes) -> None:
        """A piece of the streamed answer, about to be sent."""
        self.used = (self.estimate if self.used is None else self.used) + piece.count(_TEXT_DELTA)
        if self.recording is not None:
            self.recording.take(piece)

    def relayed(self, usage: int | None) -> None:
        """The streamed answer's last piece has been sent; ``usage``: its usage chunk's total tokens (found by
        the relay, which looks for it anyway), which replaces the count."""
        if usage is not None:
            self.used = usage
        if self.recording is not None:
            self.recording.relayed = True

    def finish(self) -> None:
        """After the answer: the token correction and the cache entry, queued for the ledger's next call."""
        if self.finished:
            return
        self.finished = True
        if self.ledger is None:
            return
        write = self.write
        if self.recording is not None:
            entry = self.recording.entry()
            if entry is not None:
                write = (self.recording.key, entry, self.recording.ttl_ms)
        units = (self.used or 0) - self.estimate if self.token_states else 0
        if units and correct_locally(self.leases, self.blocks, units):
            units = 0
        if units or write is not None:
            self.ledger.settle(self.token_states, units, write)


_NO_LIMITS = Admission(finished=True)  # shared: nothing to settle, nothing read; never changed


async def admit_chat(
    state: Any, scope: Scope, model: str, messages: list[dict[str, Any]], cache_key: bytes | None = None
) -> Admission:
    """Admit a chat request for ``model`` under the limits of its API key (``scope["state"]["api_key"]``,
    set by authentication; None or absent: no key) or client address, and read its cache entry
    (``cache_key``) in the same call; raises :class:`APIError` 429/503."""
    limiter: Limiter = state.limiter
    api_key = scope.get("state", {}).get("api_key")
    if api_key is None and limiter.anonymous is None and cache_key is None:
        return _NO_LIMITS
    plan = limiter.plan(api_key, client_address(scope), model)
    if plan is None and cache_key is None:
        return _NO_LIMITS
    return await limiter.admit(plan, estimate_messages(messages), cache_key)


def client_address(scope: Scope) -> str | None:
    """The address a request came from, as the server saw it (uvicorn takes ``X-Forwarded-For`` from the
    proxies in ``FORWARDED_ALLOW_IPS``)."""
    client = scope.get("client")
    return client[0] if client else None


class Limiter:
    """The limits of the settings, enforced in Redis through the app's :class:`Ledger` (``ledger``, set by
    the lifespan; None without Redis). :meth:`plan` for a request, :meth:`admit` before the model call,
    :meth:`Admission.finish` after the answer."""

    def __init__(
        self,
        models: dict[str, RateLimit],
        *,
        anonymous: RateLimit | None = None,
        failure: Literal["open", "closed"] = "open",
        prefix: str = "sb:rl:",
        lease_s: float = 0.0,
    ) -> None:
        self.models = models
        self.anonymous = anonymous
        self.failure = failure
        self.prefix = prefix
        self.ledger: Ledger | None = None
        self.leases = LeaseBook(lease_s)
        self._plans: dict[tuple[Any, ...], Plan | None] = {}
        self._warned = 0.0

    def plan(self, api_key: Any, client: str | None, model: str) -> Plan | None:
        """The limits a request for ``model`` is under (None: none): by its key (an
        :class:`gateway.api_keys.ApiKey`), or (no key) its client address. Kept for later requests."""
        if api_key is not None:
            cache_key: tuple[Any, ...] = (api_key.id, api_key.rpm, api_key.tpm, model)
        else:
            cache_key = (None, client, model)
        try:
            return self._plans[cache_key]
        except KeyError:
            pass
        limits = self.limits(
            key_id=None if api_key is None else str(api_key.id),
            key_limit=None if api_key is None else RateLimit(rpm=api_key.rpm, tpm=api_key.tpm),
            client=client,
            model=model,
        )
        if len(self._plans) >= _MAX_PLANS:  # many client addresses: start over (a plan is cheap to make)
            self._plans.clear()
            self.leases.forget()  # no plan refers to them any more
        plan = None
        if limits:
            plan = Plan(limits, self.leases.leases_for([limit.state for limit in limits]))
        self._plans[cache_key] = plan
        return plan

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

        def limit(key: str, kind: Literal["requests", "tokens"], per_minute: int, what: str) -> _Limit:
            return _Limit(LimitKey(key.encode(), per_minute, kind == "tokens"), kind, what)

        if own is not None:
            if own.rpm:
                found.append(limit(f"{base}:r", "requests", own.rpm, what))
            if own.tpm:
                found.append(limit(f"{base}:t", "tokens", own.tpm, what))
        default = self.models.get(model) or self.models.get("*")
        if default is not None:
            what = f"the model '{model}''s"
            if default.rpm:
                found.append(limit(f"{base}:m:{model}:r", "requests", default.rpm, what))
            if default.tpm:
                found.append(limit(f"{base}:m:{model}:t", "tokens", default.tpm, what))
        return found

    async def admit(self, plan: Plan | None, tokens: int, cache_key: bytes | None = None) -> Admission:
        """Charge one request and ``tokens`` (the prompt's estimate) against ``plan``'s limits, and read the
        cache entry ``cache_key``, in the ledger's next call; raises :class:`APIError` 429 (a limit is
        reached) or 503 (Redis unreachable and the policy is closed)."""
        limits = plan.limits if plan is not None else []
        ledger = self.ledger
        if ledger is None:
            return self._unavailable(limits, "no Redis is configured (GATEWAY_REDIS_URL)")
        if plan is None:
            try:
                row = await ledger.admit((), tokens, cache_key)
            except REDIS_ERRORS as exc:
                return self._unavailable(limits, str(exc) or type(exc).__name__)
            return Admission(ledger, (), tokens, None, row[-1])
        book = self.leases
        now = time.monotonic()
        if plan.leases:
            view = book.take(plan, tokens, now)
            if view is None and (renewal := book.renewal(plan)) is not None:
                await asyncio.wait((renewal,))  # another request is asking for new blocks: wait, try again
                now = time.monotonic()
                view = book.take(plan, tokens, now)
            if view is not None:  # admitted here, from what this replica holds
                leased = Admission(ledger, plan.token_states, tokens, plan.headers(view), leases=plan.token_leases)
                if cache_key is not None:
                    leased.cached = await self._cache_entry(ledger, cache_key)
                return leased
        asked_at = now
        wants = book.wants(plan, tokens, now) if plan.leases else None
        try:
            asked = ledger.admit(plan.states, tokens, cache_key, wants)
            if wants is not None:
                book.asking(plan, wants, asked)
            row = await asked
        except REDIS_ERRORS as exc:
            return self._unavailable(limits, str(exc) or type(exc).__name__)
        finally:
            if wants is not None:
                book.answered(plan, wants)
        if not row[0]:
            raise _refusal(limits, row, tokens, plan.headers(row))
        now = plan.admitted_at = time.monotonic()
        if not plan.leases:
            return Admission(ledger, plan.token_states, tokens, plan.headers(row), row[-1])
        view = book.update(plan, row, asked_at, now)
        return Admission(ledger, plan.token_states, tokens, plan.headers(view), row[-1])

    async def _cache_entry(self, ledger: Ledger, cache_key: bytes) -> Any:
        """The cache entry of a request admitted from leases, read by itself (:data:`UNAVAILABLE`: Redis could not
        be asked)."""
        try:
            return (await ledger.admit((), 0, cache_key))[-1]
        except REDIS_ERRORS as exc:
            self._warn(f"response cache not read: Redis is unreachable ({exc or type(exc).__name__})")
            return UNAVAILABLE

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


def _refusal(limits: list[_Limit], row: list[Any], tokens: int, headers: list[tuple[bytes, bytes]]) -> APIError:
    refused = [(limit, int(row[4 * i + 3])) for i, limit in enumerate(limits) if row[4 * i + 3] > 0]
    limit, retry_ms = max(refused, key=lambda v: v[1])
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
    return usage_total(payload.get("usage") if isinstance(payload, dict) else None)
