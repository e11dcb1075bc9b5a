"""Leases: a busy gateway replica takes a small share of a large rate limit ahead, and hands it out itself.

Without leases every limited request waits for a Redis round trip before it goes to the model, and every
request costs Redis a script run. A replica that keeps a subject (API key or client address) busy instead
takes, with one of its requests' admission, up to ``GATEWAY_RATE_LIMIT_LEASE_S`` seconds of each of its
limits' rate ahead (a limit of L a minute: ``L * lease_s / 60`` units) and admits that subject's next
requests from it, in process, with no call at all. The units are charged in Redis when they are taken, so
the limit is never exceeded, whatever the number of replicas: a lease only moves a limit's units from the
shared bucket to one replica's hands early. What it can cost is the other way: units one replica holds
while another is refused. That is bounded by the lease size per replica (with the default 0.1 s and three
replicas, 0.5 % of a limit) and lasts until the units are used or given back.

When a lease is taken, and when not:

* only for a subject that is busy here (an admission through Redis in the last :data:`BUSY_S`), so one
  request now and then never takes a lease and never needs one given back;
* only when every limit of the request has a lease worth taking: at least :data:`MIN_REQUESTS` requests'
  worth (for a token limit, that many times this request's estimate); small limits (60 requests a minute,
  a few thousand tokens) are always counted in Redis one request at a time;
* only while the limit has room for the lease beside the request (``limits.lua``): near a limit every
  request is counted in Redis, by every replica, exactly.

Token corrections of leased requests (the real usage against the estimate) are made on the lease itself when
it can take them. A lease not drawn from for :data:`RETURN_AFTER_S` is given back (a negative correction in
the ledger's next call), and so is every lease at shutdown. A replica that dies holding one loses its units
until the limit refills (at most ``lease_s`` worth). The ``x-ratelimit-remaining-*`` and ``-reset-*``
headers of a request admitted from a lease are this replica's view: the limit's state in Redis when it last
asked, plus what it still holds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.ledger import Ledger, LimitKey

if TYPE_CHECKING:
    from gateway.limits import Plan

__all__ = ["BUSY_S", "MIN_REQUESTS", "RETURN_AFTER_S", "Lease", "LeaseBook", "correct_locally"]

BUSY_S = 1.0
MIN_REQUESTS = 4
RETURN_AFTER_S = 1.0
_WINDOW_MS = 60_000.0
_MAX_LEASES = 10_000


class Lease:
    """What this replica holds of one limit: ``units`` to hand out, and its last view of the limit's state in
    Redis (``tat_ms``: GCRA's theoretical arrival time after what it took, on this process's monotonic clock)."""

    __slots__ = ("asked", "held", "interval_ms", "limit", "size", "tat_ms", "units", "used_at")

    def __init__(self, limit: LimitKey, size: int) -> None:
        self.limit = limit
        self.size = size  # units taken at a time
        self.interval_ms = _WINDOW_MS / limit.per_minute
        self.units = 0
        self.asked = 0  # units asked for in calls not answered yet
        self.tat_ms = 0.0
        self.held = False  # units were taken and not given back yet
        self.used_at = 0.0

    def view(self, now_ms: float) -> tuple[int, int]:
        """Remaining units and milliseconds until the limit is whole again, as this replica sees them."""
        ahead = max(self.tat_ms - self.units * self.interval_ms - now_ms, 0.0)
        return max(math.floor((_WINDOW_MS - ahead) / self.interval_ms + 1e-6), 0), math.ceil(ahead)


def correct_locally(leases: Sequence[Lease], units: int) -> bool:
    """Apply a token correction (``units``: used minus estimated) to the leases of a request's token limits,
    if they can all take it; False: it goes to Redis instead."""
    if not leases or not all(lease.held for lease in leases):
        return False
    if units > 0 and any(lease.units < units for lease in leases):
        return False
    for lease in leases:
        lease.units -= units
    return True


class LeaseBook:
    """This replica's leases, one per limit (shared by every plan under that limit); ``lease_s``: seconds of
    a limit's rate taken at a time (0: none); ``return_after_s``: a lease not drawn from that long is given back."""

    def __init__(self, lease_s: float, return_after_s: float = RETURN_AFTER_S) -> None:
        self.lease_s = lease_s
        self.return_after_s = return_after_s
        self._leases: dict[LimitKey, Lease] = {}
        self._held: set[Lease] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def leases_for(self, limits: Sequence[LimitKey]) -> tuple[Lease, ...]:
        """The leases of ``limits`` (empty: not every one of them is large enough to lease)."""
        sizes = [math.floor(limit.per_minute * self.lease_s / 60) for limit in limits]
        if not limits or min(sizes) < MIN_REQUESTS:
            return ()
        if len(self._leases) >= _MAX_LEASES:  # many subjects: forget the leases nobody holds
            self._leases = {limit: lease for limit, lease in self._leases.items() if lease.held}
        leases = []
        for limit, size in zip(limits, sizes, strict=True):
            lease = self._leases.get(limit)
            if lease is None:
                lease = self._leases[limit] = Lease(limit, size)
            leases.append(lease)
        return tuple(leases)

    def take(self, plan: Plan, tokens: int, now: float) -> bool:
        """Admit one request of ``tokens`` from ``plan``'s leases, all or nothing."""
        for lease in plan.leases:
            if lease.units < (tokens if lease.limit.tokens else 1):
                return False
        for lease in plan.leases:
            lease.units -= tokens if lease.limit.tokens else 1
            lease.used_at = now
        return True

    def wants(self, plan: Plan, tokens: int, now: float) -> list[int] | None:
        """The units to ask for with this request's admission, per limit (topping each lease up to its size,
        counting what other requests asked for and have not been answered yet), or None: no lease (the subject
        is not busy here, or a lease would not cover enough requests). Call :meth:`answered` with them once the
        admission is answered, whatever the answer."""
        if now - plan.admitted_at > BUSY_S:
            return None
        wants = []
        for lease in plan.leases:
            cost = tokens if lease.limit.tokens else 1
            if lease.size < MIN_REQUESTS * cost:
                return None
            wants.append(max(lease.size - lease.units - lease.asked, 0))
        if not any(wants):
            return None
        for lease, want in zip(plan.leases, wants, strict=True):
            lease.asked += want
        return wants

    def answered(self, plan: Plan, wants: list[int]) -> None:
        for lease, want in zip(plan.leases, wants, strict=True):
            lease.asked -= want

    def update(self, plan: Plan, row: list[Any], now: float, ledger: Ledger) -> list[Any]:
        """Take in an admitted request's row (``limits.lua``): the units leased, the limits' state; the row of
        the request's headers as this replica now sees the limits."""
        for j, lease in enumerate(plan.leases):
            leased = row[4 * j + 4]
            if leased:
                lease.units += leased
                lease.held = True
                lease.used_at = now
                self._held.add(lease)
            lease.tat_ms = now * 1000 + row[4 * j + 2]
        if self._held and self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.return_after_s, self._sweep, ledger)
        return self.view(plan, now)

    def view(self, plan: Plan, now: float) -> list[Any]:
        """The row of a request admitted from ``plan``'s leases: the limits as this replica sees them."""
        now_ms = now * 1000
        view: list[Any] = [1]
        for lease in plan.leases:
            view += [*lease.view(now_ms), 0, 0]
        return [*view, None]

    def give_back(self, ledger: Ledger, *, idle_s: float = 0.0) -> None:
        """Give back (in the ledger's next call) what the leases not drawn from for ``idle_s`` still hold."""
        now = time.monotonic()
        for lease in [lease for lease in self._held if now - lease.used_at >= idle_s]:
            if lease.units:
                ledger.settle((lease.limit,), -lease.units)
            lease.units = 0
            lease.held = False
            self._held.discard(lease)

    def _sweep(self, ledger: Ledger) -> None:
        self._sweeper = None
        self.give_back(ledger, idle_s=self.return_after_s)
        if self._held:
            self._sweeper = asyncio.get_running_loop().call_later(self.return_after_s, self._sweep, ledger)

    def close(self, ledger: Ledger) -> None:
        """At shutdown: give every lease back (before the ledger drains)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self.give_back(ledger)
