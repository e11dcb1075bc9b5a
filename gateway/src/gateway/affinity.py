"""Session affinity: the requests of one session go to the same replica, so its prompt cache is reused.

The chat route calls :func:`set_affinity` with the request's session id; :func:`order` then puts the replica that
rendezvous (highest-random-weight) hashing picks for that session first among the routable ones. Rendezvous hashing
needs no shared state between gateways (every gateway picks the same replica) and moves only the sessions of a
replica that leaves. A replica that is down or has its breaker open is not routable, so the session falls back to
its next choice (the same for every request of the session while it lasts, so the cache builds up there).
Saturated means: the gateway already has ``GATEWAY_AFFINITY_MAX_IN_FLIGHT`` requests in flight at the session's
replica (its slots are full; the request would wait in its queue), then the least busy replica is asked first; or
the replica answers 429 (its queue is full), then the proxy tries the next candidate. The proxy counts each
answer to a session as ``gateway_affinity_total{result="hit"}`` (its own replica, :meth:`Registry.home`) or
``result="fallback"``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import TypeVar

__all__ = ["affinity_key", "order", "set_affinity"]

_KEY: ContextVar[str | None] = ContextVar("gateway_affinity_key", default=None)

T = TypeVar("T")


def set_affinity(key: str | None) -> None:
    """Route the current request (task) by ``key`` (a session id); None: least busy."""
    _KEY.set(key)


def affinity_key() -> str | None:
    return _KEY.get()


def _weight(key: str, url: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\0{url}".encode(), digest_size=8).digest(), "big")


def order(key: str, replicas: Sequence[T], url: Callable[[T], str]) -> list[T]:
    """``replicas`` with ``key``'s preferred one (by ``url(replica)``) first; the others keep their order."""
    if len(replicas) < 2:
        return list(replicas)
    best = max(range(len(replicas)), key=lambda i: _weight(key, url(replicas[i])))
    return [replicas[best], *replicas[:best], *replicas[best + 1 :]]
