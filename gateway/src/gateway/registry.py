"""Which replica of which service serves which model, learnt from each replica's own ``/v1/models``.

Replicas are read on start, every ``refresh_interval_s``, and at once (at most once a second) when a
request names a model nobody is known to serve, so a new model is routable without editing the gateway.
A model is routed to the least busy reachable replica that lists it; a replica that refuses a connection
is skipped until the next read.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from chat_common.middleware import DISCOVERY_USER_AGENT

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


class Registry:
    def __init__(
        self, services: dict[str, list[str]], session: aiohttp.ClientSession, *, timeout_s: float = 2.0
    ) -> None:
        self.replicas = [Replica(name, url) for name, urls in services.items() for url in urls]
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._routes: dict[str, list[Replica]] = {}
        self._cards: dict[str, dict[str, Any]] = {}
        self._tiebreak = itertools.count()
        self._refresh_lock = asyncio.Lock()
        self._last_refresh = 0.0

    # -- reading the services ----------------------------------------------------------------------
    async def refresh(self) -> None:
        async with self._refresh_lock:
            await asyncio.gather(*(self._read(replica) for replica in self.replicas))
            self._rebuild()
            self._last_refresh = time.monotonic()

    async def refresh_if_stale(self, min_age_s: float = 1.0) -> None:
        if time.monotonic() - self._last_refresh >= min_age_s:
            await self.refresh()

    async def _read(self, replica: Replica) -> None:
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
        """Replicas serving ``model``, least busy first (ties rotate); empty when the model is unknown."""
        replicas = self._routes.get(model)
        if not replicas:
            return []
        if len(replicas) == 1:
            return list(replicas)
        turn = next(self._tiebreak)
        n = len(replicas)
        return sorted(replicas, key=lambda r: (r.in_flight, (replicas.index(r) - turn) % n))

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


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
