"""The embedded store: one SQLite file through aiosqlite, safe for many coroutines and several processes.

Every write is one ``BEGIN IMMEDIATE`` transaction: it takes SQLite's write lock before reading the session's
last ``seq``, so two writers (coroutines of this process, or other processes on the same file) can never
number messages alike or out of order; a writer that finds the lock taken waits up to the busy timeout.
In-process, writes share one connection behind an :class:`asyncio.Lock`; reads use a second connection, which
in WAL mode reads the last committed state without waiting for writers. ``synchronous=NORMAL``: a committed
append survives a crash of the process; a power cut can lose the last few (SQLite's usual WAL trade-off).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from history.messages import NewMessage, SessionInfo, StoredMessage, check_session_id, iso, utc_now
from history.store.contract import StoreUnavailable, in_request_order, stamp, to_store

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id    TEXT PRIMARY KEY,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    message_count INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_by_updated ON sessions (updated_at DESC, session_id);
CREATE TABLE IF NOT EXISTS messages (
    session_id        TEXT NOT NULL,
    seq               INTEGER NOT NULL,
    role              TEXT NOT NULL,
    content           TEXT NOT NULL,
    model             TEXT,
    prompt_tokens     INTEGER,
    completion_tokens INTEGER,
    request_id        TEXT,
    message_id        TEXT,
    status            TEXT NOT NULL,
    metadata          TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    UNIQUE (session_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS messages_by_message_id
    ON messages (session_id, message_id) WHERE message_id IS NOT NULL;
"""

_COLUMNS = (
    "seq",
    "role",
    "content",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "request_id",
    "message_id",
    "status",
    "metadata",
    "created_at",
)
_SELECT = f"SELECT {', '.join(_COLUMNS)} FROM messages"
_INSERT = f"INSERT INTO messages (session_id, {', '.join(_COLUMNS)}) VALUES ({', '.join('?' * (len(_COLUMNS) + 1))})"
_TOUCH_SESSION = """
INSERT INTO sessions (session_id, created_at, updated_at, message_count) VALUES (?, ?, ?, ?)
ON CONFLICT (session_id) DO UPDATE SET
    updated_at = excluded.updated_at, message_count = message_count + excluded.message_count
"""
_NO_LIMIT = 2**63 - 1

_HINT = "Check that HISTORY_SQLITE_PATH names a file this service can create and write, on a disk with free space."
_BUSY_HINT = (
    "Another process held the file's write lock longer than HISTORY_SQLITE_BUSY_TIMEOUT_S; retry, or raise the timeout."
)


class SQLiteStore:
    """Implements :class:`history.store.contract.MessageStore` on one SQLite file. Build it with :meth:`open`."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self.path = path
        self.description = f"SQLite file {path}"
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()
        self._closed = False

    @classmethod
    async def open(cls, path: Path, busy_timeout_s: float = 5.0) -> SQLiteStore:
        """Create the folder, the file and the schema as needed (idempotent, safe for concurrent starts) and
        return the open store; raise :class:`StoreUnavailable` when the file cannot be opened or written."""
        path = await asyncio.to_thread(path.absolute)  # reads the working directory
        opened: list[aiosqlite.Connection] = []
        try:
            await asyncio.to_thread(_prepare, path, busy_timeout_s)
            writer = await aiosqlite.connect(path, timeout=busy_timeout_s, isolation_level=None)
            opened.append(writer)
            mode = await _scalar(writer, "PRAGMA journal_mode=WAL")
            if str(mode).lower() != "wal":
                logger.warning(
                    "SQLite could not switch %s to WAL mode (got %r): readers will wait for writers", path, mode
                )
            await writer.execute("PRAGMA synchronous=NORMAL")
            await writer.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} COMMIT;")
            reader = await aiosqlite.connect(path, timeout=busy_timeout_s, isolation_level=None)
            opened.append(reader)
            await reader.execute("PRAGMA query_only=ON")
        except (OSError, sqlite3.Error) as exc:
            for connection in opened:
                with contextlib.suppress(Exception):
                    await connection.close()
            raise StoreUnavailable(f"SQLite file {path}", _reason(exc), _HINT) from exc
        return cls(path, writer, reader)

    async def append(self, session_id: str, messages: Sequence[NewMessage]) -> list[StoredMessage]:
        check_session_id(session_id)
        if not messages:
            return []
        ids = [m.message_id for m in messages if m.message_id is not None]
        async with self._transaction() as db:
            existing = await self._by_message_id(db, session_id, ids) if ids else {}
            fresh = to_store(messages, existing)
            stored: list[StoredMessage] = []
            if fresh:
                last = await _scalar(
                    db, "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE session_id = ?", (session_id,)
                )
                now = utc_now()
                stored = stamp(fresh, int(last) + 1, now)
                await db.executemany(_INSERT, [_row(session_id, s) for s in stored])
                await db.execute(_TOUCH_SESSION, (session_id, iso(now), iso(now), len(stored)))
        return in_request_order(messages, existing, stored)

    async def recent(self, session_id: str, limit: int, before_seq: int | None = None) -> list[StoredMessage]:
        check_session_id(session_id)
        rows = await self._read(
            f"{_SELECT} WHERE session_id = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
            (session_id, _NO_LIMIT if before_seq is None else before_seq, limit),
        )
        return [_message(row) for row in reversed(rows)]

    async def sessions(self, limit: int, offset: int) -> list[SessionInfo]:
        rows = await self._read(
            "SELECT session_id, message_count, created_at, updated_at FROM sessions "
            "ORDER BY updated_at DESC, session_id LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [SessionInfo(session_id=r[0], message_count=r[1], created_at=r[2], updated_at=r[3]) for r in rows]

    async def delete(self, session_id: str) -> int:
        check_session_id(session_id)
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM messages WHERE session_id = ?", (session_id,))
            deleted = cursor.rowcount
            await db.execute("DELETE FROM sessions WHERE session_id = ?", (session_id,))
        return max(deleted, 0)

    async def ping(self) -> None:
        if not self._closed and not self.path.exists():
            raise StoreUnavailable(
                self.description,
                "the database file has been removed",
                "Restart the service to create it again, or restore the file.",
            )
        await self._read("SELECT 1 FROM sessions LIMIT 1", ())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._write_lock:
            for connection in (self._writer, self._reader):
                with contextlib.suppress(Exception):
                    await connection.close()

    # internals

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(self.description, "the store has been closed", "The service is shutting down.")

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` on the write connection; rolled back on any error or
        cancellation. Database errors other than constraint violations become :class:`StoreUnavailable`."""
        async with self._write_lock:
            self._check_open()
            db = self._writer
            try:
                if db.in_transaction:  # a rollback that was itself interrupted
                    await db.execute("ROLLBACK")
                await db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    await db.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(Exception):
                        await db.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError:
                raise  # a broken invariant, not an unavailable database: let it be a logged 500
            except sqlite3.Error as exc:
                raise self._unavailable(exc) from exc

    async def _read(self, sql: str, params: tuple[Any, ...]) -> list[sqlite3.Row]:
        self._check_open()
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from exc

    async def _by_message_id(
        self, db: aiosqlite.Connection, session_id: str, ids: list[str]
    ) -> dict[str, StoredMessage]:
        rows = await db.execute_fetchall(
            f"{_SELECT} WHERE session_id = ? AND message_id IN ({', '.join('?' * len(ids))})", (session_id, *ids)
        )
        return {m.message_id: m for m in map(_message, rows) if m.message_id is not None}

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        reason = _reason(exc)
        return StoreUnavailable(self.description, reason, _BUSY_HINT if "locked" in reason else _HINT)


async def _scalar(db: aiosqlite.Connection, sql: str, params: tuple[Any, ...] = ()) -> Any:
    async with db.execute(sql, params) as cursor:
        row = await cursor.fetchone()
    return None if row is None else row[0]


def _prepare(path: Path, busy_timeout_s: float) -> None:
    """Create the folder, and open the file once with plain sqlite3: when aiosqlite's connect fails it does not
    wait for its worker thread to stop, which then outlives (and complains about) a closing event loop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sqlite3.connect(path, timeout=busy_timeout_s).close()


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _row(session_id: str, message: StoredMessage) -> tuple[Any, ...]:
    values = message.model_dump()
    values["metadata"] = json.dumps(values["metadata"], ensure_ascii=False, separators=(",", ":"))
    return (session_id, *(values[c] for c in _COLUMNS))


def _message(row: Sequence[Any]) -> StoredMessage:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["metadata"] = json.loads(values["metadata"])
    return StoredMessage.model_validate(values)
