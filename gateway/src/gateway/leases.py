"""Leases: a busy gateway replica takes a small share of a large rate limit ahead, and hands it out itself.

Without leases every limited request waits for a Redis round trip before it goes to the model, and every
request costs Redis a script run. A replica that keeps a subject (API key or client address) busy instead
takes, with one of its requests' admission, ``GATEWAY_RATE_LIMIT_LEASE_S`` seconds of a limit's rate ahead
(a limit of L a minute: ``L * lease_s / 60`` units) and admits that subject's next requests from it, in
process, with no call at all.

A lease is a block of the limit's next slots (GCRA: a slot every 60/L seconds), charged in Redis when it is
taken. As time passes the limit refills from the front and the block's slots pass: a unit whose slot has
passed is gone, used or not (:meth:`Lease.usable`), since using it would let more than the limit through.
The gateway counts a block as ending a little before it does in Redis (measured from when it asked,
:meth:`LeaseBook.update`). Nothing is ever given back, and Redis never lets a refund (a token estimate given
back) move the limit's state before the end of the last block leased on it (``limits.lua``): either would
pull the blocks leased since back with it, and the replicas holding them could hand out slots the limit
counts as free again. So leases never let more through than the limit, whatever the number of replicas.
What they cost is the other way: units a replica holds that another could have used (at most a lease per
limit per replica: with the default 0.1 s and three replicas, 0.5 % of a limit) until they are used or their
slots pass (within ``lease_s`` when the limit is little used; when it is nearly full, the block lies further
ahead, up to a minute), and refunds lost to that rule.

When a lease is taken, and when not:

* only for a subject that is busy here (a request admitted in the last :data:`BUSY_S`), so one request now
  and then never takes a lease and never leaves one unused;
* only when every limit of the subject is worth leasing: at least :data:`MIN_REQUESTS` requests' worth (for
  a token limit, that many times this request's estimate). A subject with one small limit (60 requests a
  minute, a few thousand tokens) is counted in Redis one request at a time on all of them;
* for the limits whose lease cannot cover the request, and only while each of those has room for its lease
  beside the request (``limits.lua``): near a limit every request is counted in Redis, by every replica,
  exactly. A limit whose lease still covers the request keeps it (the request is then counted in Redis on
  that limit too, beside the others: a request is admitted from all of its limits' leases or none);
* one request asking for a limit's lease at a time (the requests the leases cannot admit meanwhile wait for
  its answer and try them again); a new block replaces what is left of the old one (less than one request's
  cost).

Token corrections of requests admitted from a lease (the real usage against the estimate) are made on the
lease when it still holds the block they were taken from and can take them: what the answer used more comes
out of the block's usable units, what it used less goes back to the block (never past its size), so the
block's units used and held never exceed its slots. Other corrections go to Redis. The
``x-ratelimit-remaining-*`` and ``-reset-*`` headers of a subject with leases are this replica's view: the
limit's state in Redis when it last asked, plus what it still holds.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gateway.ledger import LimitKey

if TYPE_CHECKING:
    from gateway.limits import Plan

__all__ = ["BUSY_S", "MIN_REQUESTS", "Lease", "LeaseBook", "correct_locally"]

BUSY_S = 1.0
MIN_REQUESTS = 4
_WINDOW_MS = 60_000.0
_NOT_REFUSED = (0, 0)  # a row's retry_ms and leased, for a request admitted from a lease


class Lease:
    """What this replica holds of one limit: one block of ``units`` to hand out, whose slots in the limit end at
    ``until_ms``, and its last view of the limit's state in Redis (``tat_ms``: GCRA's theoretical arrival time).
    Both are on this process's monotonic clock, in ms. Only the units whose slots are still ahead count
    (:meth:`usable`)."""

    __slots__ = ("asked", "block", "interval_ms", "limit", "size", "tat_ms", "tokens", "units", "until_ms")

    def __init__(self, limit: LimitKey, size: int) -> None:
        self.limit = limit
        self.tokens = limit.tokens  # a request costs its tokens (else 1)
        self.size = size  # units taken at a time
        self.interval_ms = _WINDOW_MS / limit.per_minute
        self.units = 0
        self.until_ms = 0.0
        self.block = 0  # which block it holds: one more with each new one
        self.asked: asyncio.Future[Any] | None = None  # the admission asking for a new block, while it is out
        self.tat_ms = 0.0

    def usable(self, now_ms: float) -> int:
        """The units held whose slots are still ahead (the units held are the block's last slots)."""
        slots = int((self.until_ms - now_ms) / self.interval_ms)  # (rounded toward 0: the same once at least 0)
        if slots <= 0:
            return 0
        return self.units if self.units < slots else slots

    def view(self, now_ms: float, usable: int) -> tuple[int, int]:
        """Remaining units and milliseconds until the limit is whole again, as this replica sees them, holding
        ``usable`` units (:meth:`usable`)."""
        ahead = max(self.tat_ms - usable * self.interval_ms - now_ms, 0.0)
        return max(math.floor((_WINDOW_MS - ahead) / self.interval_ms + 1e-6), 0), math.ceil(ahead)


def correct_locally(leases: Sequence[Lease], blocks: Sequence[int], units: int) -> bool:
    """Apply a token correction (``units``: used minus estimated) of a request admitted from the ``blocks`` of the
    leases of its token limits to them, if they still hold those blocks and can all take it (what it used more
    among the usable units, what it used less within the block's size); False: it goes to Redis instead."""
    if not leases:
        return False
    now_ms = time.monotonic() * 1000
    for lease, block in zip(leases, blocks, strict=True):
        if lease.block != block or (lease.usable(now_ms) < units if units > 0 else lease.units - units > lease.size):
            return False
    for lease in leases:
        lease.units -= units
    return True


class LeaseBook:
    """This replica's leases, one per limit (shared by every plan under that limit); ``lease_s``: seconds of
    a limit's rate taken at a time (0: none)."""

    def __init__(self, lease_s: float) -> None:
        self.lease_s = lease_s
        self._leases: dict[LimitKey, Lease] = {}

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

    def forget(self) -> None:
        """Forget every lease, when the plans that referred to them are forgotten (many subjects): what they
        held passes unused."""
        self._leases = {}

    def take(self, plan: Plan, tokens: int, now: float) -> list[Any] | None:
        """Admit one request of ``tokens`` from ``plan``'s leases, all or nothing: the row of its headers (the
        limits as this replica sees them, :meth:`view`), or None. The hot path: each lease looked at once."""
        now_ms = now * 1000
        left = []
        for lease in plan.leases:
            cost = tokens if lease.tokens else 1
            usable = lease.usable(now_ms)
            if usable < cost or cost <= 0:
                return None
            left.append(usable - cost)
        for lease in plan.leases:
            lease.units -= tokens if lease.tokens else 1
        plan.admitted_at = now
        return _row(plan.leases, now_ms, left)

    def wants(self, plan: Plan, tokens: int, now: float) -> list[int] | None:
        """A request ``plan``'s leases could not admit goes to Redis; this says what to ask for beside it: a
        block for each limit whose lease cannot cover it (and no other request is asking for), or None (the
        subject is not busy here, a lease would not cover enough requests, or no lease needs a block). Call
        :meth:`asking` with the admission's future once it is asked for, :meth:`answered` once it is answered,
        whatever the answer."""
        if now - plan.admitted_at > BUSY_S:
            return None
        now_ms = now * 1000
        wants = []
        for lease in plan.leases:
            cost = tokens if lease.tokens else 1
            if lease.size < MIN_REQUESTS * cost:
                return None
            wants.append(lease.size if lease.usable(now_ms) < cost and lease.asked is None else 0)
        return wants if any(wants) else None

    def asking(self, plan: Plan, wants: list[int], admission: asyncio.Future[Any]) -> None:
        for lease, want in zip(plan.leases, wants, strict=True):
            if want:
                lease.asked = admission

    def answered(self, plan: Plan, wants: list[int]) -> None:
        for lease, want in zip(plan.leases, wants, strict=True):
            if want:
                lease.asked = None

    def renewal(self, plan: Plan) -> asyncio.Future[Any] | None:
        """The admission out asking for a new block of one of ``plan``'s leases, if any: a request the leases
        cannot admit meanwhile waits for it and tries them again, instead of a call of its own (when a block
        passes, every request in flight would otherwise go to Redis at once)."""
        for lease in plan.leases:
            if lease.asked is not None:
                return lease.asked
        return None

    def update(self, plan: Plan, row: list[Any], asked_at: float, now: float) -> list[Any]:
        """Take in an admitted request's row (``limits.lua``): the blocks leased, the limits' state; the row of
        the request's headers as this replica now sees the limits. ``asked_at``: when the admission was asked
        for, before the script ran. The row says how far ahead of Redis's clock the limit's state is (rounded
        up to a millisecond); counted from ``asked_at``, less that millisecond, a block ends no later here than
        it does in Redis, so no unit is used after its slot has passed, however long the call took."""
        for j, lease in enumerate(plan.leases):
            lease.tat_ms = asked_at * 1000 + row[4 * j + 2] - 1
            leased = row[4 * j + 4]
            if leased:
                lease.units = leased  # what was left of the old block (less than a request) passes unused
                lease.until_ms = lease.tat_ms  # the block is the last of the limit's slots
                lease.block += 1
        return self.view(plan, now)

    def view(self, plan: Plan, now: float) -> list[Any]:
        """The row of a request admitted from ``plan``'s leases: the limits as this replica sees them."""
        now_ms = now * 1000
        return _row(plan.leases, now_ms, [lease.usable(now_ms) for lease in plan.leases])


def _row(leases: Sequence[Lease], now_ms: float, held: Sequence[int]) -> list[Any]:
    """A row in the script's layout (``limits.lua``) for an admitted request, from this replica's view of its
    limits, holding ``held`` usable units of each."""
    row: list[Any] = [1]
    for lease, usable in zip(leases, held, strict=True):
        row += lease.view(now_ms, usable)
        row += _NOT_REFUSED
    row.append(None)
    return row
