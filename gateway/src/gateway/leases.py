"""Leases: a busy gateway replica takes a small share of a large rate limit ahead, and hands it out itself.

Without leases every limited request waits for a Redis round trip before it goes to the model, and every
request costs Redis a script run. A replica that keeps a subject (API key or client address) busy instead
takes, with one of its requests' admission, ``GATEWAY_RATE_LIMIT_LEASE_S`` seconds of each of its limits'
rate ahead (a limit of L a minute: ``L * lease_s / 60`` units) and admits that subject's next requests from
them, in process, with no call at all.

A lease is a reservation of the limit's next slots (GCRA: one slot every 60/L seconds), charged in Redis
when it is taken. As time passes the limit refills from the front and the block's slots pass: a unit whose
slot has passed is gone, used or not (:meth:`Lease.usable`), since using or giving back a unit the limit has
already refilled would let more than the limit through. The gateway counts a block as ending a little
before it does in Redis (measured from when it asked, :meth:`LeaseBook.update`), and a give-back names the
block's end, so the script gives back only the units still ahead when it runs (``Ledger.give_back``). So a
request limit is never exceeded, whatever the number of replicas, and a lease lasts at most ``lease_s``. What leases can cost is the other way: units one replica
holds while another is refused, at most one lease per limit per replica (with the default 0.1 s and three
replicas, 0.5 % of a limit), until they are used, given back or passed.

When a lease is taken, and when not:

* only for a subject that is busy here (a request admitted in the last :data:`BUSY_S`), so one
  request now and then never takes a lease and never needs one given back;
* for all of a request's limits or none (``limits.lua`` grants them together: a request is admitted from
  the leases of all its limits), and only when each is worth taking: at least :data:`MIN_REQUESTS` requests'
  worth (for a token limit, that many times this request's estimate). A subject with one small limit (60
  requests a minute, a few thousand tokens) is counted in Redis one request at a time on all of them;
* only while every limit has room for the lease beside the request: near a limit every request is counted
  in Redis, by every replica, exactly;
* one block at a time, and one request asking for it at a time: a request the leases cannot admit gives
  back what they still hold and asks for new blocks in the same call.

Token corrections of requests admitted from a lease (the real usage against the estimate) are made on the
lease itself when it can take them (within the block's size), others in Redis. A lease not drawn from for
:data:`RETURN_AFTER_S` is given back (a negative correction in the ledger's next call), and so is every lease
at shutdown; one granted while the gateway shuts down goes straight back (``Ledger.closing``). A replica
that dies holding one, or whose Redis call timed out after the script ran, loses those units until they
pass (at most ``lease_s``). The ``x-ratelimit-remaining-*`` and ``-reset-*`` headers of a subject with
leases are this replica's view: the limit's state in Redis when it last asked, plus what it still holds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.ledger import Ledger, LimitKey, lease_end

if TYPE_CHECKING:
    from gateway.limits import Plan

__all__ = ["BUSY_S", "MIN_REQUESTS", "RETURN_AFTER_S", "Lease", "LeaseBook", "correct_locally"]

BUSY_S = 1.0
MIN_REQUESTS = 4
RETURN_AFTER_S = 1.0
_WINDOW_MS = 60_000.0


class Lease:
    """What this replica holds of one limit: one block of ``units`` to hand out, whose slots in the limit end at
    ``until_ms``, and its last view of the limit's state in Redis (``tat_ms``: GCRA's theoretical arrival time).
    Both are on this process's monotonic clock, in ms.

    A lease is a reservation of the limit's next slots: as time passes, the limit refills from the front and the
    slots of the block pass one by one (a unit every ``interval_ms``). A unit whose slot has passed is gone,
    used or not: using it, or giving it back, would let through more than the limit. So only the units whose
    slots are still ahead count (:meth:`usable`)."""

    __slots__ = (
        "asked",
        "held",
        "interval_ms",
        "limit",
        "redis_until_ms",
        "size",
        "tat_ms",
        "units",
        "until_ms",
        "used_at",
    )

    def __init__(self, limit: LimitKey, size: int) -> None:
        self.limit = limit
        self.size = size  # units taken at a time
        self.interval_ms = _WINDOW_MS / limit.per_minute
        self.units = 0
        self.until_ms = 0.0
        self.redis_until_ms = 0  # the same end in Redis's time, for giving units back (Ledger.give_back)
        self.asked = 0  # units asked for in calls not answered yet
        self.tat_ms = 0.0
        self.held = False  # a block was taken and not given back yet
        self.used_at = 0.0

    def usable(self, now_ms: float) -> int:
        """The units held whose slots are still ahead."""
        return min(self.units, max(math.floor((self.until_ms - now_ms) / self.interval_ms), 0))

    def view(self, now_ms: float) -> tuple[int, int]:
        """Remaining units and milliseconds until the limit is whole again, as this replica sees them."""
        ahead = max(self.tat_ms - self.usable(now_ms) * self.interval_ms - now_ms, 0.0)
        return max(math.floor((_WINDOW_MS - ahead) / self.interval_ms + 1e-6), 0), math.ceil(ahead)


def correct_locally(leases: Sequence[Lease], units: int) -> bool:
    """Apply a token correction (``units``: used minus estimated) of a request admitted from the leases of its
    token limits to them, if they can all take it (what it used more among the usable units, what it used less
    within the block's size); False: it goes to Redis instead."""
    if not leases:
        return False
    now_ms = time.monotonic() * 1000
    for lease in leases:
        if not lease.held or (lease.usable(now_ms) < units if units > 0 else lease.units - units > lease.size):
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
        leases = []
        for limit, size in zip(limits, sizes, strict=True):
            lease = self._leases.get(limit)
            if lease is None:
                lease = self._leases[limit] = Lease(limit, size)
            leases.append(lease)
        return tuple(leases)

    def forget_idle(self) -> None:
        """Forget the leases nobody holds: when the plans that referred to them are forgotten (many subjects)."""
        self._leases = {limit: lease for limit, lease in self._leases.items() if lease.held}

    def take(self, plan: Plan, tokens: int, now: float) -> bool:
        """Admit one request of ``tokens`` from ``plan``'s leases, all or nothing."""
        now_ms = now * 1000
        for lease in plan.leases:
            if lease.usable(now_ms) < (tokens if lease.limit.tokens else 1):
                return False
        for lease in plan.leases:
            lease.units -= tokens if lease.limit.tokens else 1
            lease.used_at = now
        plan.admitted_at = now
        return True

    def put_back(self, plan: Plan, tokens: int) -> None:
        """Undo :meth:`take` (the request never went on), on the leases still held (a lease given back meanwhile
        has its units counted already: what the request had taken stays charged, a little under the limit)."""
        for lease in plan.leases:
            if lease.held:
                lease.units += tokens if lease.limit.tokens else 1

    def wants(self, plan: Plan, tokens: int, now: float, ledger: Ledger) -> list[int] | None:
        """A request ``plan``'s leases could not admit goes to Redis; this says what to ask for beside it: a new
        block for every limit of the plan, or None (the subject is not busy here, a lease would not cover
        enough requests, or other requests have asked already). What the leases still hold is given back first,
        in the same call (a lease is one block at a time, and no unit stays stranded on a limit the plan can no
        longer be admitted from). Call :meth:`answered` with the result once the admission is answered."""
        if now - plan.admitted_at > BUSY_S or any(lease.asked for lease in plan.leases):
            return None
        for lease in plan.leases:
            if lease.size < MIN_REQUESTS * (tokens if lease.limit.tokens else 1):
                return None
        for lease in plan.leases:
            self._give_back(lease, now * 1000, ledger)
            lease.asked = lease.size
        return [lease.size for lease in plan.leases]

    def answered(self, plan: Plan, wants: list[int]) -> None:
        for lease in plan.leases:
            lease.asked = 0

    def update(self, plan: Plan, row: list[Any], asked_at: float, now: float, ledger: Ledger) -> list[Any]:
        """Take in an admitted request's row (``limits.lua``): the blocks leased, the limits' state; the row of
        the request's headers as this replica now sees the limits. ``asked_at``: when the admission was asked
        for, before the script ran. The row says how far ahead of Redis's clock the limit's state is (rounded
        up to a millisecond); counted from ``asked_at``, less that millisecond, a block ends no later here than
        it does in Redis, so no unit is used after its slot has passed, however long the call took."""
        for j, lease in enumerate(plan.leases):
            lease.tat_ms = asked_at * 1000 + row[4 * j + 2] - 1
            leased = row[4 * j + 4]
            if leased:
                lease.units = leased
                lease.until_ms = lease.tat_ms  # the block is the last of the limit's slots
                lease.redis_until_ms = lease_end(row, j)
                lease.held = True
                lease.used_at = now
                self._held.add(lease)
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
        """Give back (in the ledger's next call) the usable units of the leases not drawn from for ``idle_s``."""
        now = time.monotonic()
        for lease in [lease for lease in self._held if now - lease.used_at >= idle_s]:
            self._give_back(lease, now * 1000, ledger)

    def _give_back(self, lease: Lease, now_ms: float, ledger: Ledger) -> None:
        if lease.held and lease.usable(now_ms):  # Redis gives back those still ahead when the call runs
            ledger.give_back(lease.limit, lease.units, lease.redis_until_ms)
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
