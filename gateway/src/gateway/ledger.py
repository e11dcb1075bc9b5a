"""The Redis work of the rate limits and the response cache, batched: one script call in flight at a time,
each carrying every request that came while the one before it was out (group commit).

Every chat request under a limit or asking for the cache needs Redis twice: before the model (charge its
limits, read its cache entry: an *admission*) and after the answer (correct its token charge with the real
usage, store its answer: a *settlement*). One script call each was two round trips per request, and at
concurrency 32 the gateway spent about a third of its CPU on them and their system calls
(``bench/RESULTS.md``). The :class:`Ledger` sends them together instead:

* the admissions asked for during one turn of the event loop go out as one call at the end of the turn
  (a lone request pays one round trip and nothing more); those that come while a call is in flight wait
  for its answer and then go out together in the next call; each request waits for its own row of the
  reply. The batch grows with the round trip: a remote Redis gets fewer, larger calls, never a pile of
  small ones (at concurrency 32 on one machine a call carried about 6.5 requests);
* settlements are not sent by themselves: they are queued (the corrections of one plan summed) and ride
  on the next call, or go out ``settle_delay_s`` after they were queued when no request comes. They are
  always applied before the admissions of the same call, so a request sees every correction and stored
  answer of the answers this gateway finished before it came (a client's next request sees its last
  one); other replicas see them within ``settle_delay_s`` (plus a round trip).

A call with no limit to charge or correct (cache lookups of requests admitted from a lease, or under no limit,
and cache entries to store) is sent as plain ``MGET``/``SET`` commands, pipelined, instead of the script, when
the lean connection is open (through redis-py, under TLS, the script does it).

A reply goes straight to its call's requests as soon as the connection has parsed it (``_Call`` is the
connection's receiver: no future, no loop turn in between). The script is atomic and takes a call's
admissions in order, each request all-or-nothing against the state the ones before it left, so N replicas
still enforce one limit exactly. When Redis cannot be asked, every admission of the call fails with the
error (the caller applies ``GATEWAY_REDIS_FAILURE``) and its settlements are dropped with a warning (a
correction or a cache entry, never an answer).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from gateway.redis_state import REDIS_ERRORS
from gateway.resp import FastConnection, Receiver, pack_bytes

__all__ = ["SETTLE_DELAY_S", "Ledger", "LimitKey"]

logger = logging.getLogger(__name__)

SETTLE_DELAY_S = 0.005
MAX_ADMISSIONS = 256  # per call: a longer script would hold Redis (single-threaded) for other clients
MAX_WRITE_BYTES = 8 << 20  # queued cache entries past this go out at once
_WARN_EVERY_S = 10.0
_SCRIPT = Path(__file__).with_name("limits.lua").read_text()
_SHA = hashlib.sha1(_SCRIPT.encode()).hexdigest().encode()


@dataclass(frozen=True, slots=True)
class LimitKey:
    """One limit's state in Redis: its key, its limit a minute, and whether a request costs its tokens
    (else 1)."""

    key: bytes
    per_minute: int
    tokens: bool


_Admission = tuple[Sequence[LimitKey], int, bytes | None, Sequence[int] | None, "asyncio.Future[list[Any]]"]


class _Call:
    """One call of the script: its keys and arguments (and RESP command), the admissions waiting for it.
    It receives its own reply (:class:`gateway.resp.Receiver`): the connection hands it over as soon as it
    is parsed, with no loop turn in between."""

    __slots__ = ("admissions", "answered", "args", "command", "keys", "ledger", "plain", "settles")

    def __init__(self, ledger: Ledger, keys: list[bytes], args: list[bytes], admissions: list[_Admission]) -> None:
        self.ledger = ledger
        self.keys = keys
        self.args = args
        self.admissions = admissions
        self.command = b""
        self.settles = False
        self.plain = False  # cache reads and writes only, as plain commands (``Ledger._send_plain``)
        self.answered = False

    def done(self) -> bool:
        return self.answered

    def set_result(self, rows: Any) -> None:
        self.answered = True
        if self.plain:  # MGET's values (or the last SET's OK): the rows the script would have answered
            rows = [[1, value] for value in rows] if self.admissions else []
        self.ledger._deliver(self, rows)
        self.ledger._done(self)

    def set_exception(self, error: BaseException) -> None:
        self.answered = True
        if isinstance(error, ResponseError) and str(error).startswith("NOSCRIPT"):
            self.ledger._in_task(self)  # Redis forgot the script (a restart, SCRIPT FLUSH): load it, send again
        else:
            self.ledger._fail(self, error)
        self.ledger._done(self)


class _WriteReply:
    """Receives the reply of a plain cache write (:meth:`Ledger._send_plain`): nothing to do unless it failed."""

    __slots__ = ("ledger",)

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def done(self) -> bool:
        return False

    def set_result(self, result: Any) -> None:
        pass

    def set_exception(self, error: BaseException) -> None:
        self.ledger._warn(f"answers not cached: Redis: {error}")


class Ledger:
    """Admissions and settlements for one Redis server, batched (module docstring). ``fast`` is the lean
    connection (:mod:`gateway.resp`); None sends through ``redis`` itself (TLS)."""

    def __init__(
        self,
        redis: Redis,
        fast: FastConnection | None,
        *,
        settle_delay_s: float = SETTLE_DELAY_S,
        max_admissions: int = MAX_ADMISSIONS,
    ) -> None:
        self.fast = fast
        self.settle_delay_s = settle_delay_s
        self.max_admissions = max_admissions
        self._admissions: list[_Admission] = []
        self._settlements: dict[int, list[Any]] = {}  # id(limits) -> [limits, units]
        self._writes: dict[bytes, tuple[bytes, int]] = {}
        self._write_bytes = 0
        self._timer: asyncio.TimerHandle | None = None
        self._in_flight: set[object] = set()  # calls sent and not answered yet (a _Call, or a task)
        self._idle: asyncio.Future[None] | None = None  # drain() waits on it
        self._overdue = False  # the settlements' delay ran out while a call was in flight
        self._scheduled = False  # a flush at the end of this loop turn
        self._script = None if fast is not None else redis.register_script(_SCRIPT)
        self._write_reply = _WriteReply(self)
        self._warned = 0.0

    def admit(
        self,
        limits: Sequence[LimitKey],
        tokens: int,
        cache_key: bytes | None,
        leases: Sequence[int] | None = None,
    ) -> asyncio.Future[list[Any]]:
        """Charge one request (and ``tokens`` on its token limits) against ``limits``, take ``leases`` (units
        per limit, for the gateway to hand out itself: :mod:`gateway.leases`) where they fit, and read the cache
        entry ``cache_key``: in the call that goes out at the end of this loop turn, or, while a call is in
        flight, in the one that goes out as soon as it is answered. Await the result: the request's row of the reply
        (``limits.lua``), or what Redis raised (:data:`gateway.redis_state.REDIS_ERRORS`). A plain future,
        not a coroutine: one level less for the request to pass through on the hot path."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._admissions.append((limits, tokens, cache_key, leases, future))
        if len(self._admissions) >= self.max_admissions:
            self._flush()
        elif not self._scheduled and not self._in_flight:
            self._scheduled = True
            loop.call_soon(self._turn_ended)
        return future

    def settle(self, limits: Sequence[LimitKey], units: int, write: tuple[bytes, bytes, int] | None = None) -> None:
        """Queue a correction of ``units`` (signed) on ``limits`` and a cache entry ``write`` (key, value,
        TTL in ms) for the next call (at the latest ``settle_delay_s`` from now). ``limits`` is best the same
        object for every request under the same limits (a :class:`gateway.limits.Plan`'s): their corrections
        are summed as one."""
        if units:
            queued = self._settlements.get(id(limits))
            if queued is None:
                self._settlements[id(limits)] = [limits, units]  # keeps ``limits`` alive: its id stays its own
            else:
                queued[1] += units
        if write is not None:
            key, value, ttl_ms = write
            self._writes[key] = (value, ttl_ms)
            self._write_bytes += len(value)
        if not (self._settlements or self._writes):
            return
        if self._write_bytes >= MAX_WRITE_BYTES:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.settle_delay_s, self._on_timer)

    async def drain(self) -> None:
        """Send what is queued and wait until every call is answered (the app's shutdown)."""
        while self.pending():
            if not self._in_flight:
                self._flush()
            if self._in_flight:
                self._idle = asyncio.get_running_loop().create_future()
                await self._idle

    def pending(self) -> bool:
        """Whether anything is queued or in flight."""
        return bool(self._admissions or self._settlements or self._writes or self._in_flight)

    def _turn_ended(self) -> None:
        self._scheduled = False
        if not self._in_flight:  # else they go out when the call in flight is answered
            self._flush()

    def _on_timer(self) -> None:
        self._timer = None
        if self._in_flight:
            self._overdue = True  # goes out when the call in flight is answered
        else:
            self._flush()

    def _flush(self) -> None:
        """Send what is queued as one call."""
        self._overdue = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        admissions, self._admissions = self._admissions, []
        settlements, self._settlements = self._settlements, {}
        writes, self._writes = self._writes, {}
        self._write_bytes = 0
        if not (admissions or settlements or writes):
            return
        if not settlements and self.fast is not None and self.fast.is_open() and not any(a[0] for a in admissions):
            self._send_plain(admissions, writes)
            return
        keys: dict[bytes, int] = {}  # each key once, numbered from 1 (KEYS of the script)
        moved: dict[tuple[bytes, int], int] = {}
        for limits, units in settlements.values():
            for limit in limits:
                slot = (limit.key, limit.per_minute)
                moved[slot] = moved.get(slot, 0) + units
        settled = [[keys.setdefault(k, len(keys) + 1), pm, units] for (k, pm), units in moved.items() if units]
        values: list[bytes] = []
        written = []
        for key, (value, ttl_ms) in writes.items():
            values.append(value)
            written.append([keys.setdefault(key, len(keys) + 1), ttl_ms, len(values) + 1])
        plans: dict[int, int] = {}  # id(limits) -> its number among the call's plans, from 1
        planned: list[list[int]] = []
        admitted = []
        for limits, tokens, cache_key, leases, _ in admissions:
            plan = plans.get(id(limits))
            if plan is None:
                plan = plans[id(limits)] = len(planned) + 1
                planned.append([])
                for limit in limits:
                    planned[-1] += (keys.setdefault(limit.key, len(keys) + 1), limit.per_minute, limit.tokens)
            cache = 0 if cache_key is None else keys.setdefault(cache_key, len(keys) + 1)
            admitted.append((plan, tokens, cache, leases or 0))
        call = _Call(self, list(keys), [orjson.dumps([settled, written, planned, admitted]), *values], admissions)
        call.settles = bool(settled or written)
        if self.fast is not None:
            call.command = pack_bytes([b"EVALSHA", _SHA, b"%d" % len(keys), *call.keys, *call.args])
            self._in_flight.add(call)
            if self.fast.send_now(call.command, call):  # on the open connection: the reply comes to the call
                return
            self._in_flight.discard(call)
        self._in_task(call)

    def _send_plain(self, admissions: list[_Admission], writes: dict[bytes, tuple[bytes, int]]) -> None:
        """Cache reads and writes alone (no limit to charge or correct: a request admitted from a lease, or
        under no limit): plain ``SET``s and one ``MGET``, pipelined in one write, cheaper for Redis than the
        script. The call receives the last reply; the writes' replies before it only report errors."""
        assert self.fast is not None
        parts = [pack_bytes([b"SET", key, value, b"PX", b"%d" % ttl_ms]) for key, (value, ttl_ms) in writes.items()]
        if admissions:
            parts.append(pack_bytes([b"MGET", *[cache_key or b"" for _, _, cache_key, _, _ in admissions]]))
        call = _Call(self, [], [], admissions)
        call.plain = True
        call.settles = bool(writes)
        receivers: list[Receiver] = [self._write_reply] * (len(parts) - 1)
        self._in_flight.add(call)
        self.fast.send_now(b"".join(parts), *receivers, call)

    def _in_task(self, call: _Call) -> None:
        """Send ``call`` from a task: where the connection must be opened first, the script loaded again, or
        redis-py send it (TLS)."""
        task = asyncio.get_running_loop().create_task(self._call(call))
        self._in_flight.add(task)
        task.add_done_callback(self._done)

    async def _call(self, call: _Call) -> None:
        try:
            if self.fast is None:
                assert self._script is not None
                rows = await self._script(keys=call.keys, args=call.args)  # redis-py loads it on NOSCRIPT
            else:
                try:
                    rows = await self.fast.call_packed(call.command)
                except ResponseError as exc:
                    if not str(exc).startswith("NOSCRIPT"):
                        raise
                    await self.fast.call("SCRIPT", "LOAD", _SCRIPT)
                    rows = await self.fast.call_packed(call.command)
        except REDIS_ERRORS as exc:
            self._fail(call, exc)
            return
        self._deliver(call, rows)

    def _done(self, call: object) -> None:
        """A call is answered, failed, or handed to a task: what was queued meanwhile goes out."""
        self._in_flight.discard(call)
        if self._in_flight:
            return
        if self._admissions or self._overdue:
            self._flush()
        elif self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    def _deliver(self, call: _Call, rows: Any) -> None:
        if not isinstance(rows, list) or len(rows) != len(call.admissions):  # never seen: fail, never hang
            got = f"{len(rows)} rows" if isinstance(rows, list) else type(rows).__name__
            logger.error("the limits script answered %s to a call of %d admissions", got, len(call.admissions))
            self._fail(call, ResponseError("the limits script's answer does not match its call"))
            return
        for (limits, tokens, _, _, future), row in zip(call.admissions, rows, strict=True):
            if not future.done():
                future.set_result(row)
            elif row[0] == 1 and tokens:  # admitted, but its client left meanwhile: no answer, no tokens used
                self.settle([limit for limit in limits if limit.tokens], -tokens)  # (a lease taken passes unused)

    def _fail(self, call: _Call, error: BaseException) -> None:
        for *_, future in call.admissions:
            if not future.done():
                future.set_exception(error)
        if call.settles:
            what = "answers not cached" if call.plain else "token usage not corrected, answers not cached"
            self._warn(f"{what}: Redis: {error or type(error).__name__}")

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned >= _WARN_EVERY_S:  # one line per interval, not one per call
            self._warned = now
            logger.warning(message)
