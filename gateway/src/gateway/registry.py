"""Which replica of which service serves which model, learnt from each replica's own ``/v1/models``.

Replicas are read on start, every ``refresh_interval_s``, and at once (at most once a second) when a
request names a model nobody is known to serve, so a new model is routable without editing the gateway.
Each read first resolves every configured URL (:mod:`gateway.discovery`): a name with several addresses
is one replica per address, and replicas whose address is gone are dropped. A model is routed to the
least busy reachable replica that lists it (the session's own replica first, :mod:`gateway.affinity`);
a replica that refuses a connection is skipped until the next read, and one whose circuit breaker is
open (:mod:`gateway.breaker`) until its cool-down ends.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver

from chat_common.middleware import DISCOVERY_USER_AGENT
from gateway import affinity
from gateway.breaker import CircuitBreaker
from gateway.discovery import expand

__all__ = ["Registry", "Replica", "describe_error"]

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Replica:
    service: str
    url: str
    reachable: bool = False
    error: str | None = "not read yet"
    in_flight: int = 0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(3, 10.0))
    source: str = ""  # the configured URL this replica was found from (its own URL when not expanded)


class Registry:
    def __init__(
        self,
        services: dict[str, list[str]],
        session: aiohttp.ClientSession,
        *,
        timeout_s: float = 2.0,
        resolver: AbstractResolver | None = None,
        breaker_threshold: int = 3,
        breaker_cooldown_s: float = 10.0,
        affinity_max_in_flight: int = 0,
    ) -> None:
        self._sources = [(name, url) for name, urls in services.items() for url in urls]
        self._resolver = resolver
        self._breaker = (breaker_threshold, breaker_cooldown_s)
        self._saturated_at = affinity_max_in_flight
        self.replicas = [self._new(name, url, url) for name, url in self._sources]
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._routes: dict[str, list[Replica]] = {}
        self._cards: dict[str, dict[str, Any]] = {}
        self._tiebreak = itertools.count()
        self._refresh_lock = asyncio.Lock()
        self._last_refresh = 0.0

    # -- reading the services ----------------------------------------------------------------------
    def _new(self, service: str, url: str, source: str) -> Replica:
        return Replica(service, url, breaker=CircuitBreaker(*self._breaker), source=source)

    async def refresh(self) -> None:
        async with self._refresh_lock:
            if self._resolver is not None:
                await self._discover(self._resolver)
            await asyncio.gather(*(self._read(replica) for replica in self.replicas))
            self._rebuild()
            self._last_refresh = time.monotonic()

    async def refresh_if_stale(self, min_age_s: float = 1.0) -> None:
        if time.monotonic() - self._last_refresh >= min_age_s:
            await self.refresh()

    async def _discover(self, resolver: AbstractResolver) -> None:
        """Resolve every configured URL; keep the Replica objects (counts, breakers) of addresses still there."""
        known = {(r.service, r.url): r for r in self.replicas}
        found = await asyncio.gather(*(expand(url, resolver) for _, url in self._sources), return_exceptions=True)
        replicas: list[Replica] = []
        for (service, source), urls in zip(self._sources, found, strict=True):
            if isinstance(urls, BaseException):
                # The name does not resolve (no container yet, DNS down): one unreachable replica says why.
                error = f"cannot resolve {source}: {describe_error(urls)}"
                kept = [r for r in self.replicas if r.source == source]
                if not kept:
                    kept = [self._new(service, source, source)]
                for replica in kept:
                    if replica.reachable or replica.error != error:
                        logger.warning("service name does not resolve", extra={"url": source, "error": error})
                    replica.reachable, replica.error = False, error
                replicas.extend(kept)
                continue
            for url in urls:
                replicas.append(known.get((service, url)) or self._new(service, url, source))
        self.replicas = replicas

    async def _read(self, replica: Replica) -> None:
        if replica.error is not None and replica.error.startswith("cannot resolve"):
            return
        try:
            async with self._session.get(
                f"{replica.url}/v1/models", timeout=self._timeout, headers={"User-Agent": DISCOVERY_USER_AGENT}
            ) as response:
                response.raise_for_status()
                data = (await response.json(content_type=None))["data"]
            replica.models = {card["id"]: card for card in data}
            replica.reachable, replica.error = True, None
        except (TimeoutError, aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
            if replica.reachable or replica.error == "not read yet":
                logger.warning(
                    "service replica unreachable",
                    extra={"upstream_service": replica.service, "url": replica.url, "error": describe_error(exc)},
                )
            replica.reachable, replica.error = False, describe_error(exc)

    def _rebuild(self) -> None:
        routes: dict[str, list[Replica]] = {}
        cards: dict[str, dict[str, Any]] = {}
        owner: dict[str, str] = {}
        for replica in self.replicas:
            if not replica.reachable:
                continue
            for model_id, card in replica.models.items():
                if model_id in owner and owner[model_id] != replica.service:
                    logger.warning(
                        "model served by two services; routing to the first configured",
                        extra={"model": model_id, "services": [owner[model_id], replica.service]},
                    )
                    continue
                owner[model_id] = replica.service
                routes.setdefault(model_id, []).append(replica)
                cards.setdefault(model_id, card)
        self._routes, self._cards = routes, cards

    async def run(self, interval_s: float) -> None:
        """Re-read the services forever (a background task of the app)."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.refresh()
            except Exception:  # keep the routing table we have
                logger.exception("refreshing the service registry failed")

    # -- routing -----------------------------------------------------------------------------------
    def candidates(self, model: str) -> list[Replica]:
        """Replicas serving ``model`` that may take a request now (breaker closed, or half-open with no probe
        under way): those without a recent failure first, then least busy first (ties rotate); the current
        session's replica first when there is one (:func:`gateway.affinity.set_affinity`) unless it is
        saturated (this gateway has ``affinity_max_in_flight`` requests in flight there: its slots are full,
        a request would queue). Empty when the model is unknown or nothing may take it."""
        routed = self._routes.get(model)
        if not routed:
            return []
        replicas = [r for r in routed if r.breaker.available()]
        if len(replicas) > 1:
            turn = next(self._tiebreak)
            n = len(replicas)
            position = {id(r): i for i, r in enumerate(replicas)}
            # A replica whose last answers failed (not yet enough to open its breaker) comes after the others;
            # a half-open one is not demoted (its probe must go some time).
            replicas.sort(key=lambda r: (r.breaker.suspect(), r.in_flight, (position[id(r)] - turn) % n))
        key = affinity.affinity_key()
        if not key:
            return replicas
        ordered = affinity.order(key, replicas, _url)
        if self._saturated_at and ordered[0].in_flight >= self._saturated_at:
            return replicas  # least busy first: the session moves rather than queues
        return ordered

    def home(self, model: str, key: str) -> Replica | None:
        """The replica a session prefers for ``model`` among every replica known to list it, routable or not
        (down, or out for a cool-down): requests served elsewhere are affinity fallbacks."""
        known = [r for r in self.replicas if model in r.models]
        return affinity.order(key, known, _url)[0] if known else None

    def open_circuits(self, model: str) -> list[Replica]:
        """Replicas serving ``model`` that are out for a cool-down (their breaker is open)."""
        return [r for r in self._routes.get(model, []) if not r.breaker.available()]

    def mark_unreachable(self, replica: Replica, error: str) -> None:
        """A connection failed: route around this replica until the next read says otherwise."""
        replica.reachable, replica.error = False, error
        self._rebuild()

    @property
    def model_ids(self) -> list[str]:
        return sorted(self._cards)

    def card(self, model: str) -> dict[str, Any] | None:
        """What the owning service says about ``model`` (``context_length`` among others)."""
        return self._cards.get(model)

    def cards(self) -> list[dict[str, Any]]:
        return [self._cards[m] for m in sorted(self._cards)]

    def unreachable(self) -> list[Replica]:
        return [r for r in self.replicas if not r.reachable]

    def tripped(self) -> list[Replica]:
        """Reachable replicas taken out by their circuit breaker."""
        return [r for r in self.replicas if r.reachable and r.breaker.state != "closed"]


def _url(replica: Replica) -> str:
    return replica.url


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
