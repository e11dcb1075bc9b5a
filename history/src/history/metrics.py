"""Prometheus metrics of the history service, on the app's own registry, and the store wrapper that feeds them."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from history.messages import InvalidSessionId, NewMessage, SessionInfo, StoredMessage
from history.store import MessageStore

__all__ = ["MeteredStore", "ServiceMetrics"]


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.appends = Counter("history_appends", "Successful appends (requests).", registry=registry)
        self.appended_messages = Counter(
            "history_appended_messages",
            "Messages in successful appends, retried ones (already stored) included.",
            registry=registry,
        )
        self.reads = Counter(
            "history_reads", "Successful reads, by kind (messages, sessions).", ["kind"], registry=registry
        )
        self.deleted_messages = Counter(
            "history_deleted_messages", "Messages removed by session deletes.", registry=registry
        )
        self.store_seconds = Histogram(
            "history_store_seconds",
            "Time spent in the store, by operation (append, recent, sessions, delete, ping).",
            ["operation"],
            registry=registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.store_errors = Counter(
            "history_store_errors", "Store calls that failed, by operation.", ["operation"], registry=registry
        )
        self.store_open = Gauge("history_store_open", "1 once the store is open.", registry=registry)


class MeteredStore:
    """A :class:`MessageStore` that times every call of the store it wraps and counts what went through."""

    def __init__(self, store: MessageStore, metrics: ServiceMetrics) -> None:
        self.store = store
        self.metrics = metrics
        self.description = store.description

    @asynccontextmanager
    async def _observed(self, operation: str) -> AsyncIterator[None]:
        started = time.perf_counter()
        try:
            yield
        except InvalidSessionId:
            raise
        except Exception:
            self.metrics.store_errors.labels(operation).inc()
            raise
        finally:
            self.metrics.store_seconds.labels(operation).observe(time.perf_counter() - started)

    async def append(self, session_id: str, messages: Sequence[NewMessage]) -> list[StoredMessage]:
        async with self._observed("append"):
            stored = await self.store.append(session_id, messages)
        self.metrics.appends.inc()
        self.metrics.appended_messages.inc(len(stored))
        return stored

    async def recent(self, session_id: str, limit: int, before_seq: int | None = None) -> list[StoredMessage]:
        async with self._observed("recent"):
            messages = await self.store.recent(session_id, limit, before_seq)
        self.metrics.reads.labels("messages").inc()
        return messages

    async def sessions(self, limit: int, offset: int) -> list[SessionInfo]:
        async with self._observed("sessions"):
            sessions = await self.store.sessions(limit, offset)
        self.metrics.reads.labels("sessions").inc()
        return sessions

    async def delete(self, session_id: str) -> int:
        async with self._observed("delete"):
            deleted = await self.store.delete(session_id)
        self.metrics.deleted_messages.inc(deleted)
        return deleted

    async def ping(self) -> None:
        async with self._observed("ping"):
            await self.store.ping()

    async def close(self) -> None:
        await self.store.close()
        self.metrics.store_open.set(0)
