"""Where conversations live: :class:`MessageStore` and its two implementations, chosen from the settings.

MongoDB when a URI is set, else SQLite. The MongoDB module (and so motor) is imported only when it is used.
"""

from __future__ import annotations

from history.config import Settings
from history.store.contract import MessageStore, StoreUnavailable

__all__ = ["MessageStore", "StoreUnavailable", "describe_store", "open_store"]


def describe_store(settings: Settings) -> str:
    """Which store ``settings`` select, in words fit for a log line (no password)."""
    if settings.mongodb_uri is not None:
        from history.store.mongo import describe_mongodb

        return describe_mongodb(settings.mongodb_uri.get_secret_value(), settings.mongodb_database)
    return f"SQLite file {settings.sqlite_path.absolute()}"


async def open_store(settings: Settings) -> MessageStore:
    """Open the store ``settings`` select; raise :class:`StoreUnavailable` when it cannot be opened."""
    if settings.mongodb_uri is not None:
        from history.store.mongo import MongoStore

        return await MongoStore.open(
            settings.mongodb_uri.get_secret_value(), settings.mongodb_database, settings.mongodb_timeout_s
        )
    from history.store.sqlite import SQLiteStore

    return await SQLiteStore.open(settings.sqlite_path, settings.sqlite_busy_timeout_s)
