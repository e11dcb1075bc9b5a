"""A lean Redis connection for the hot path: RESP over one asyncio connection, pipelined, hiredis-parsed.

The rate limits' and the cache's script calls (:mod:`gateway.ledger`, batched) and the API
key lookups go through it. Through redis-py's asyncio client one script call costs about 110 µs of CPU and
300 µs of wall time at concurrency 1 (its connection pool, command packing and response callbacks run per
call); written straight to one shared connection, with replies matched to callers in order, the same call
costs about 20 µs of CPU and 50 µs of wall time, and calls from concurrent requests share the socket's
writes and reads (``bench/RESULTS.md``). The connection is opened from the app's ``redis.asyncio.Redis``
settings (host, port or unix socket, database, user and password), on first use, on the running event loop;
it is opened again on the call after it broke. A connection that answers nothing for ``timeout_s`` is closed
and its calls fail. Errors are redis-py's (``ConnectionError``, ``TimeoutError``, ``ResponseError``), so
callers handle one family whichever client ran the call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

import hiredis
from redis.asyncio import Redis
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["FastConnection", "Receiver", "fast_connection_for", "pack", "pack_bytes"]


def fast_connection_for(redis: Redis) -> FastConnection | None:
    """A :class:`FastConnection` to the server ``redis`` talks to; None when its connections are of a
    kind this does not speak (TLS, sentinel, cluster): then the caller uses ``redis`` itself."""
    pool = redis.connection_pool
    kwargs = pool.connection_kwargs
    if pool.connection_class is Connection:
        address: tuple[str, int] | str = (kwargs.get("host", "localhost"), int(kwargs.get("port", 6379)))
    elif pool.connection_class is UnixDomainSocketConnection:
        address = kwargs["path"]
    else:
        return None
    return FastConnection(
        address,
        db=int(kwargs.get("db", 0) or 0),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        timeout_s=float(kwargs.get("socket_timeout") or 2.0),
        connect_timeout_s=float(kwargs.get("socket_connect_timeout") or 2.0),
    )


class Receiver(Protocol):
    """What a reply is handed to: an :class:`asyncio.Future`, or an object of the caller's with the same three
    methods (it is called as soon as its reply is parsed)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class _Protocol(asyncio.Protocol):
    def __init__(self, owner: FastConnection) -> None:
        self.owner = owner
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.transport: Any = None  # asyncio's or uvloop's (not an asyncio.Transport subclass)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        waiting = self.owner.waiting
        while (reply := self.reader.gets()) is not False:
            if not waiting:  # a reply nobody asked for: the stream is out of step
                self.owner.broken(ConnectionError("Redis sent a reply that no call was waiting for"), self)
                return
            future = waiting.popleft()[0]
            if not future.done():
                if isinstance(reply, ResponseError):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.broken(ConnectionError(f"Redis closed the connection ({exc or 'end of stream'})"), self)


class FastConnection:
    """One pipelined connection; :meth:`call` sends a command and waits for its reply."""

    def __init__(
        self,
        address: tuple[str, int] | str,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout_s: float = 2.0,
        connect_timeout_s: float = 2.0,
    ) -> None:
        self.address = address
        self.db = db
        self.username = username
        self.password = password
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.waiting: deque[tuple[Receiver, float]] = deque()
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._outgoing: list[bytes] = []

    async def call(self, *args: str | bytes | int | float) -> Any:
        protocol = self._protocol or await self._connect()
        return await self._send(protocol, pack(args))

    async def call_packed(self, command: bytes) -> Any:
        """:meth:`call` with the command already in RESP (:func:`pack`)."""
        protocol = self._protocol or await self._connect()
        return await self._send(protocol, command)

    def send_now(self, command: bytes, *receivers: Receiver) -> bool:
        """Write ``command`` (in RESP, after anything queued) at once: for a caller that batched its own commands
        (:mod:`gateway.ledger`). ``command`` holds one command per receiver; each reply goes to its receiver,
        in order, as soon as it is parsed (no future, no loop turn in between). False when the connection is
        not open (then use :meth:`call_packed`, which opens it)."""
        protocol = self._protocol
        if protocol is None:
            return False
        self._queue(protocol, command, receivers, now=True)
        return True

    def is_open(self) -> bool:
        return self._protocol is not None

    def _send(self, protocol: _Protocol, command: bytes) -> asyncio.Future[Any]:
        """Queue the command; the commands queued in one turn of the event loop go out in one write (one
        system call for all the requests that asked meanwhile, instead of one each). The future of its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(protocol, command, (future,), now=False)
        return future

    def _queue(self, protocol: _Protocol, command: bytes, waiters: Sequence[Receiver], *, now: bool) -> None:
        """``command`` (one command per waiter) queued, each reply to go to its waiter in order; ``now``: written
        at once with what was queued before it, else with the rest of this loop turn's."""
        loop = asyncio.get_running_loop()
        if not self._outgoing and not now:
            loop.call_soon(self._flush)
        self._outgoing.append(command)
        if now:
            self._flush()  # a flush scheduled for earlier commands finds nothing left
        queued_at = loop.time()
        self.waiting.extend([(waiter, queued_at) for waiter in waiters])
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout_s, self._check)

    def _flush(self) -> None:
        # What is queued belongs to the current connection: broken() empties the queue with the old one.
        outgoing, self._outgoing = self._outgoing, []
        protocol = self._protocol
        if outgoing and protocol is not None and protocol.transport is not None:
            protocol.transport.write(b"".join(outgoing))

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._open())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                if isinstance(self.address, str):
                    _, protocol = await loop.create_unix_connection(lambda: _Protocol(self), self.address)
                else:
                    host, port = self.address
                    _, protocol = await loop.create_connection(lambda: _Protocol(self), host, port)
                setup: list[tuple[str | bytes | int | float, ...]] = []
                if self.password is not None:
                    setup.append(("AUTH", self.username, self.password) if self.username else ("AUTH", self.password))
                if self.db:
                    setup.append(("SELECT", self.db))
                self._protocol = protocol  # the setup is written first: later calls queue behind it
                replies = [self._send(protocol, pack(command)) for command in setup]
                for reply in replies:
                    await reply
        except TimeoutError as exc:  # asyncio.timeout's, the builtin
            raise RedisTimeoutError(
                f"no connection to Redis at {self.address} within {self.connect_timeout_s:g}s"
            ) from exc
        except OSError as exc:
            raise ConnectionError(f"cannot connect to Redis at {self.address}: {exc}") from exc
        return protocol

    def _check(self) -> None:
        """The watchdog: fail everything when the oldest call has waited longer than the timeout."""
        self._watchdog = None
        if not self.waiting:
            return
        loop = asyncio.get_running_loop()
        waited = loop.time() - self.waiting[0][1]
        if waited >= self.timeout_s:
            self.broken(RedisTimeoutError(f"Redis did not answer within {self.timeout_s:g}s"))
        else:
            self._watchdog = loop.call_later(self.timeout_s - waited, self._check)

    def broken(self, error: Exception, protocol: _Protocol | None = None) -> None:
        """Drop the connection (``protocol``: only if it is still the current one) and fail the calls
        waiting on it; the next call opens a new one."""
        if protocol is not None and protocol is not self._protocol:
            return  # an old connection's end, reported after a new one was opened
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abort()
        waiting, self.waiting = self.waiting, deque()
        self._outgoing = []
        for future, _ in waiting:
            if not future.done():
                future.set_exception(error)

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.broken(ConnectionError("the connection was closed"))


def pack(args: Sequence[str | bytes | int | float | None]) -> bytes:
    """A command in RESP: an array of bulk strings (numbers written in decimal, text in UTF-8)."""
    return pack_bytes([arg if isinstance(arg, bytes) else str(arg).encode() for arg in args])


def pack_bytes(args: Sequence[bytes]) -> bytes:
    """:func:`pack` of arguments that are all bytes already (the hot path's)."""
    return b"*%d\r\n%b" % (len(args), b"".join([b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in args]))
