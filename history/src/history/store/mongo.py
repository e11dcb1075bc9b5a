"""The MongoDB store, through motor. The only module that imports motor or pymongo.

Collections: ``messages`` (one document per message), ``sessions`` (``_id`` = session id, created_at,
updated_at, message_count) and ``counters`` (``_id`` = session id, ``seq`` = last number handed out).

Numbering: an append reserves a block of n numbers for its n new messages with one atomic ``$inc`` on the
session's counter, so concurrent writers (any number of processes) get disjoint, consecutive blocks. A unique
index on (session_id, seq) backs it up. Retries: message_ids are looked up before numbering; a concurrent writer
that stores the same message_id in between makes the insert fail on the unique (session_id, message_id) index,
and the append starts over and finds it stored.

All or none: on a replica set or sharded cluster the inserts and the session update run in one transaction. A
standalone server has no transactions: a failed batch insert is undone by deleting what it inserted, which
holds unless the connection is lost mid-batch. Numbers reserved by a failed or raced append are not reused, so
MongoDB can skip a ``seq`` (numbers stay strictly increasing); the SQLite store never skips.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bson import ObjectId
from motor.motor_asyncio import AsyncIOMotorClient
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure, PyMongoError

from history.messages import NewMessage, SessionInfo, StoredMessage, check_session_id, iso, utc_now
from history.store.contract import StoreUnavailable, in_request_order, stamp, to_store

__all__ = ["MongoStore", "describe_mongodb"]

logger = logging.getLogger(__name__)

_HINT = "Check that MongoDB is running and reachable at the address in HISTORY_MONGODB_URI (or MONGODB_URI)."
_ATTEMPTS = 5


def describe_mongodb(uri: str, database: str) -> str:
    """``MongoDB at host1:27017,host2, database 'x'``: the hosts of ``uri``, never its user or password."""
    rest = uri.split("://", 1)[-1]
    hosts = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    return f"MongoDB at {hosts or '?'}, database '{database}'"


class MongoStore:
    """Implements :class:`history.store.contract.MessageStore` on MongoDB. Build it with :meth:`open`, or with
    :meth:`attach` around a client you made (tests pass a ``mongomock_motor`` client)."""

    def __init__(self, client: Any, database: str, description: str) -> None:
        self.description = description
        self._client = client
        db = client[database]
        self._db = db
        self._messages = db["messages"]
        self._sessions = db["sessions"]
        self._counters = db["counters"]
        self._transactions = False
        self._closed = False

    @classmethod
    async def open(cls, uri: str, database: str, timeout_s: float = 2.0) -> MongoStore:
        """Connect, create the indexes and return the store; raise :class:`StoreUnavailable` within about
        ``timeout_s`` when no server answers."""
        description = describe_mongodb(uri, database)
        timeout_ms = max(1, int(timeout_s * 1000))
        try:
            client: Any = AsyncIOMotorClient(
                uri, serverSelectionTimeoutMS=timeout_ms, tz_aware=True, appname="switchboard-history"
            )
        except PyMongoError as exc:  # malformed URI, unresolvable SRV record
            raise StoreUnavailable(description, _reason(exc), _HINT) from exc
        try:
            return await cls.attach(client, database, description)
        except BaseException:
            client.close()
            raise

    @classmethod
    async def attach(cls, client: Any, database: str, description: str) -> MongoStore:
        """Create the indexes (idempotent) on ``client[database]`` and return the store."""
        store = cls(client, database, description)
        try:
            await store._messages.create_index(
                [("session_id", ASCENDING), ("seq", ASCENDING)], unique=True, name="session_seq"
            )
            await store._messages.create_index(
                [("session_id", ASCENDING), ("message_id", ASCENDING)],
                unique=True,
                name="session_message_id",
                partialFilterExpression={"message_id": {"$exists": True}},
            )
            await store._sessions.create_index([("updated_at", DESCENDING), ("_id", ASCENDING)], name="updated_at")
            store._transactions = await _supports_transactions(store._db)
        except PyMongoError as exc:
            raise store._unavailable(exc) from exc
        logger.info("MongoDB store ready", extra={"store": description, "transactions": store._transactions})
        return store

    async def append(self, session_id: str, messages: Sequence[NewMessage]) -> list[StoredMessage]:
        check_session_id(session_id)
        if not messages:
            return []
        self._check_open()
        ids = [m.message_id for m in messages if m.message_id is not None]
        try:
            for _ in range(_ATTEMPTS):
                existing = await self._by_message_id(session_id, ids) if ids else {}
                fresh = to_store(messages, existing)
                if not fresh:
                    return in_request_order(messages, existing, [])
                counter = await self._counters.find_one_and_update(
                    {"_id": session_id},
                    {"$inc": {"seq": len(fresh)}},
                    upsert=True,
                    return_document=ReturnDocument.AFTER,
                )
                now = utc_now()
                stored = stamp(fresh, int(counter["seq"]) - len(fresh) + 1, now)
                try:
                    await self._insert(session_id, [_document(session_id, s, now) for s in stored], now)
                except (DuplicateKeyError, BulkWriteError) as exc:
                    if not _duplicate_key(exc):
                        raise
                    # Another writer stored one of our message_ids, or this counter is behind the messages
                    # (a delete raced an append): bring it level and start over.
                    await self._counter_at_least_last_seq(session_id)
                    continue
                return in_request_order(messages, existing, stored)
        except PyMongoError as exc:
            raise self._unavailable(exc) from exc
        raise StoreUnavailable(
            self.description,
            f"{_ATTEMPTS} attempts to number the messages collided with other writers",
            "Retry the request.",
        )

    async def recent(self, session_id: str, limit: int, before_seq: int | None = None) -> list[StoredMessage]:
        check_session_id(session_id)
        self._check_open()
        query: dict[str, Any] = {"session_id": session_id}
        if before_seq is not None:
            query["seq"] = {"$lt": before_seq}
        try:
            docs = await self._messages.find(query).sort("seq", DESCENDING).limit(limit).to_list(limit)
        except PyMongoError as exc:
            raise self._unavailable(exc) from exc
        return [_message(doc) for doc in reversed(docs)]

    async def sessions(self, limit: int, offset: int) -> list[SessionInfo]:
        self._check_open()
        try:
            cursor = self._sessions.find({}).sort([("updated_at", DESCENDING), ("_id", ASCENDING)])
            docs = await cursor.skip(offset).limit(limit).to_list(limit)
        except PyMongoError as exc:
            raise self._unavailable(exc) from exc
        return [
            SessionInfo(
                session_id=d["_id"],
                message_count=d["message_count"],
                created_at=iso(d["created_at"]),
                updated_at=iso(d["updated_at"]),
            )
            for d in docs
        ]

    async def delete(self, session_id: str) -> int:
        check_session_id(session_id)
        self._check_open()
        try:
            result = await self._messages.delete_many({"session_id": session_id})
            await self._sessions.delete_one({"_id": session_id})
            await self._counters.delete_one({"_id": session_id})
        except PyMongoError as exc:
            raise self._unavailable(exc) from exc
        return int(result.deleted_count)

    async def ping(self) -> None:
        self._check_open()
        try:
            await self._db.command("ping")
        except PyMongoError as exc:
            raise self._unavailable(exc) from exc

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    # internals

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailable(self.description, "the store has been closed", "The service is shutting down.")

    async def _by_message_id(self, session_id: str, ids: list[str]) -> dict[str, StoredMessage]:
        docs = await self._messages.find({"session_id": session_id, "message_id": {"$in": ids}}).to_list(None)
        return {doc["message_id"]: _message(doc) for doc in docs}

    async def _insert(self, session_id: str, docs: list[dict[str, Any]], now: datetime) -> None:
        """Insert ``docs`` and count them on the session: in one transaction where the server has them, else
        by deleting what was inserted when the batch fails."""
        touch = (
            {"_id": session_id},
            {"$setOnInsert": {"created_at": now}, "$max": {"updated_at": now}, "$inc": {"message_count": len(docs)}},
        )
        if self._transactions:

            async def write(session: Any) -> None:
                await self._messages.insert_many(docs, ordered=True, session=session)
                await self._sessions.update_one(*touch, upsert=True, session=session)

            async with await self._client.start_session() as session:
                await session.with_transaction(write)
            return
        try:
            await self._messages.insert_many(docs, ordered=True)
        except PyMongoError:
            try:
                await self._messages.delete_many({"_id": {"$in": [doc["_id"] for doc in docs]}})
            except PyMongoError:
                logger.warning(
                    "could not undo a failed batch insert; part of it may remain", extra={"session_id": session_id}
                )
            raise
        await self._sessions.update_one(*touch, upsert=True)

    async def _counter_at_least_last_seq(self, session_id: str) -> None:
        last = await self._messages.find_one(
            {"session_id": session_id}, sort=[("seq", DESCENDING)], projection={"seq": True}
        )
        if last is not None:
            await self._counters.update_one({"_id": session_id}, {"$max": {"seq": last["seq"]}}, upsert=True)

    def _unavailable(self, exc: BaseException) -> StoreUnavailable:
        return StoreUnavailable(self.description, _reason(exc), _HINT)


async def _supports_transactions(db: Any) -> bool:
    """Replica-set members and mongos routers support multi-document transactions; standalone servers do not."""
    try:
        hello = await db.command("hello")
    except (OperationFailure, NotImplementedError):  # servers before 4.4.2; mongomock (tests)
        return False
    return "setName" in hello or hello.get("msg") == "isdbgrid"


def _duplicate_key(exc: PyMongoError) -> bool:
    if isinstance(exc, DuplicateKeyError):
        return True
    errors = exc.details.get("writeErrors", []) if isinstance(exc, BulkWriteError) else []
    return bool(errors) and all(error.get("code") == 11000 for error in errors)


def _document(session_id: str, message: StoredMessage, now: datetime) -> dict[str, Any]:
    doc = message.model_dump(exclude={"created_at"})
    if doc["message_id"] is None:
        del doc["message_id"]  # the unique (session_id, message_id) index covers only documents that have one
    return {"_id": ObjectId(), "session_id": session_id, **doc, "created_at": now}


def _message(doc: dict[str, Any]) -> StoredMessage:
    values = {k: v for k, v in doc.items() if k not in ("_id", "session_id")}
    values["created_at"] = iso(values["created_at"])
    return StoredMessage.model_validate(values)


def _reason(exc: BaseException) -> str:
    text = str(exc).split(", Timeout:", 1)[0]  # pymongo appends its topology description: long and noisy
    return text or type(exc).__name__
