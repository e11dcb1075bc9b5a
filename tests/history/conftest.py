"""Store factories for the history tests.

``make_store`` is parametrized over both stores: SQLite on a real file under ``tmp_path``, and MongoDB through
``mongomock_motor`` — no MongoDB server can run on this machine, so the MongoDB store runs its real code
against a driver-level fake (mongomock honours unique and partial indexes, ``$inc`` upserts and duplicate-key
errors, but it has no transactions and does not interleave concurrent operations the way a server does).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from mongomock_motor import AsyncMongoMockClient

from history.store import MessageStore
from history.store.mongo import MongoStore
from history.store.sqlite import SQLiteStore

StoreFactory = Callable[[], Awaitable[MessageStore]]


@pytest.fixture(params=["sqlite", "mongodb"])
async def make_store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[StoreFactory]:  # type: ignore[no-untyped-def]
    """Returns a factory: each call opens a store on the same database (one SQLite file, or one mongomock
    server); every store it opened is closed at the end of the test."""
    opened: list[MessageStore] = []
    mongo = AsyncMongoMockClient(tz_aware=True)

    async def factory() -> MessageStore:
        if request.param == "sqlite":
            store: MessageStore = await SQLiteStore.open(tmp_path / "history.sqlite3")
        else:
            store = await MongoStore.attach(mongo, "switchboard", "MongoDB at mongomock, database 'switchboard'")
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()
