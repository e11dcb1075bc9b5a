"""The response cache: a deterministic chat request asked again is answered from Redis, not the model.

Opt-in: a request asks with ``"cache": true`` in its body or the header ``X-Switchboard-Cache: use``, or
its profile has ``cache: true`` (:mod:`gateway.profiles`). Only deterministic requests are cached
(``temperature`` 0, or a ``seed``), and only plain ones: a request with a session (its answer depends on
the stored history, and must be stored) or retrieval (on the collection's passages of the moment) is
never answered from the cache.

The key is a hash of the normalised request: every field the gateway validated, less defaults and nulls,
numbers in one form, keys in sorted order (so ``{"temperature": 0}`` and ``{"temperature": 0.0,
"stream": false}`` are one request), with the route, the name the answer is given under (a profile's)
and the API key (answers are not shared between keys). ``user`` and ``cache`` do not count.

The entry is read in the same Redis call that checks the rate limits, and written with the token
corrections after the answer (:class:`gateway.limits.Admission`, :mod:`gateway.ledger`): the cache costs
no round trip of its own. A streamed answer is stored as the pieces relayed to the client and replayed
piece by piece, the same bytes with the same boundaries, ``[DONE]`` last; a whole answer as its body
(:mod:`gateway.cache_entry`). A client's next request finds the answer stored; another gateway replica
finds it within a few milliseconds (:data:`gateway.ledger.SETTLE_DELAY_S`). Only complete 200 answers
are stored: never an error answer, a stream with an error event, or a stream the client left. Entries
live ``GATEWAY_CACHE_TTL_S``; an answer larger than ``GATEWAY_CACHE_MAX_ENTRY_BYTES`` is not stored
(Redis's ``maxmemory`` policy bounds the whole).
Answers say ``X-Switchboard-Cache: hit`` or ``miss`` (``unavailable`` when Redis could not be asked:
the model answers, nothing is stored).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Scope

from chat_common.errors import APIError
from chat_common.protocol import ChatCompletionRequest
from gateway.cache_entry import Recording, decode, whole_entry
from gateway.limits import UNAVAILABLE, Admission
from gateway.proxy import EventStream

__all__ = ["CACHE_HEADER", "ResponseCache", "subject_of", "wants_cache"]

CACHE_HEADER = b"x-switchboard-cache"
_IGNORED = frozenset({"user", "cache"})  # fields that do not change the answer
_DEFAULTS = {name: f.default for name, f in ChatCompletionRequest.model_fields.items() if not f.is_required()}


def wants_cache(data: dict[str, Any], headers: list[tuple[bytes, bytes]], profile_cache: bool) -> bool:
    """Whether the request asks for the cache: its ``cache`` field, else its header, else its profile."""
    asked = data.get("cache")
    if asked is not None:
        if not isinstance(asked, bool):
            raise APIError(400, "'cache' must be true or false.", param="cache", code="invalid_value")
        return asked
    for name, value in headers:
        if name == CACHE_HEADER:
            return value.strip().lower() == b"use"
    return profile_cache


def subject_of(scope: Scope) -> str:
    """Whose cache a request reads: its API key's (``scope["state"]["api_key"]``), else the anonymous one."""
    api_key = scope.get("state", {}).get("api_key")
    return "anonymous" if api_key is None else f"key:{api_key.id}"


class ResponseCache:
    """Cached answers in Redis: :meth:`key` for a request (None: not cacheable), :meth:`replay` the entry
    its admission read, :meth:`recording` to have its answer stored by the admission."""

    def __init__(self, *, ttl_s: float, max_entry_bytes: int, prefix: str = "sb:") -> None:
        self.ttl_ms = int(ttl_s * 1000)
        self.max_entry_bytes = max_entry_bytes
        self.prefix = prefix
        self._key_prefix = f"{prefix}cache:v2:".encode()  # v2: the entry format of gateway.cache_entry

    def key(
        self, chat: ChatCompletionRequest, data: dict[str, Any], *, subject: str, route: str, answer_as: str | None
    ) -> bytes | None:
        """The cache key of a deterministic request (``data``, the body that validated as ``chat``); None for
        a sampled one (never cached).

        Normalised without a second serialisation of the validated model (measured: it was the cache's
        largest cost per request): the body's fields, less those at their default or null and the ones that
        do not change the answer, a whole number in a float field written as a float (``chat`` says which
        are floats), keys sorted at every level. Equal keys are equal requests: nothing but those
        no-op differences is dropped."""
        if not (chat.temperature == 0 or chat.seed is not None):
            return None
        request = {}
        for name, value in data.items():
            if value is None or name in _IGNORED or (name in _DEFAULTS and value == _DEFAULTS[name]):
                continue
            if type(value) is int and type(getattr(chat, name, None)) is float:
                value = float(value)
            request[name] = value
        canonical = orjson.dumps([subject, route, answer_as, request], option=orjson.OPT_SORT_KEYS)
        return self._key_prefix + hashlib.sha256(canonical).hexdigest().encode()

    def replay(self, admission: Admission) -> Response | EventStream | None:
        """The entry the admission read, as a response marked ``hit``; None when there was none."""
        stored = admission.cached
        if stored is None or stored is UNAVAILABLE:
            return None
        entry = decode(stored)
        if entry is None:
            return None
        if isinstance(entry, bytes):
            response = Response(entry, media_type="application/json")
            response.raw_headers.append((CACHE_HEADER, b"hit"))
            return response
        stream = EventStream(_replayed(entry), on_close=_nothing)
        stream.headers = [*stream.headers, (CACHE_HEADER, b"hit")]
        return stream

    def recording(self, admission: Admission, key: bytes, response: Response | EventStream) -> None:
        """Mark ``response`` a miss (``unavailable`` when Redis could not be asked) and, when it is a
        complete 200 answer, have the admission store it once sent: a stream as it is relayed."""
        if admission.cached is UNAVAILABLE or admission.ledger is None:
            _mark(response, b"unavailable")
            return
        _mark(response, b"miss")
        if response.status_code != 200:
            return
        if isinstance(response, EventStream):
            admission.recording = Recording(key, self.ttl_ms, self.max_entry_bytes)
        elif len(response.body) <= self.max_entry_bytes:
            admission.write = (key, whole_entry(bytes(response.body)), self.ttl_ms)


def _mark(response: Response | EventStream, value: bytes) -> None:
    if isinstance(response, EventStream):
        response.headers = [*response.headers, (CACHE_HEADER, value)]
    else:
        response.raw_headers.append((CACHE_HEADER, value))


async def _replayed(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


def _nothing() -> None:
    pass
