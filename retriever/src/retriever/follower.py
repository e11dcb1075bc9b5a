"""Read replicas: a retriever with ``RETRIEVER_READ_ONLY=true`` serves the collections that one writer keeps in a
shared data folder, and follows the writer's changes.

Scaling model. Searches cost an embedding and a FAISS search: CPU work that grows with traffic. Writes (ingests)
are rare and must be ordered. So one writer (``retriever``) owns the data folder, and any number of readers
(``retriever-read``) open the same folder read-only: SQLite connections in ``mode=ro``, no index file ever written,
no leftover folder removed. The collections' SQLite files are the source of truth and bump a *generation* with
every commit, so a reader knows exactly when what it holds is stale.

Every ``RETRIEVER_RELOAD_INTERVAL_S`` a reader's :class:`Follower`:

- opens collections that appeared (the writer builds one under a hidden name and renames it into place: a reader
  never sees half of one), and forgets those that are gone;
- re-opens a collection whose stored generation moved on: documents and vectors are read in one SQLite
  transaction (one commit's state); the FAISS index comes from the writer's ``index-g<generation>.faiss`` when
  it is there, else it is rebuilt from the stored vectors. A flat index is rebuilt at once (cheap); for an HNSW
  collection (costly to build) the reader keeps serving the older generation for up to
  ``RETRIEVER_INDEX_FLUSH_INTERVAL_S`` plus one check while it waits for the writer's file.

The new copy is swapped in only when it is complete, so searches never wait for a reload; the old copy is closed
one check later (a search that already holds it finishes on it).

Requirement: readers and the writer share one host's file system (one compose host, or pods on the writer's node
mounting its volume): SQLite's WAL readers need the writer's shared-memory file, which network file systems do
not provide.
"""

from __future__ import annotations

import asyncio
import logging
import time

from retriever.collection import Collection
from retriever.serving import RetrieverService

__all__ = ["Follower"]

logger = logging.getLogger(__name__)


class Follower:
    def __init__(self, service: RetrieverService) -> None:
        self.service = service
        self._retired: list[Collection] = []
        self._waiting: dict[str, tuple[int, float]] = {}  # name -> (generation, since) waiting for its index file

    async def run(self, interval_s: float) -> None:
        """Follow the writer forever (a background task of a read replica's app)."""
        while True:
            await asyncio.sleep(interval_s)
            if not self.service.loaded:
                continue
            try:
                await self.sync()
            except Exception:  # keep serving what we have
                logger.exception("following the writer's collections failed; will try again")

    async def sync(self) -> list[str]:
        """Bring the collections in step with the files; the names opened, re-opened or forgotten."""
        service, registry = self.service, self.service.registry
        retired, self._retired = self._retired, []
        for old in retired:
            await asyncio.to_thread(old.close)
        changed: list[str] = []
        folders = await asyncio.to_thread(registry.folders)
        for name in [n for n in registry.names() if n not in folders]:
            gone = registry.remove(name)
            if gone is not None:
                self._retired.append(gone)
                service.metrics.sizes(name, 0, 0)
                changed.append(name)
        for name, folder in folders.items():
            current = registry.get(name)
            if current is not None and not await self._stale(current):
                continue
            try:
                fresh = await asyncio.to_thread(Collection.open, folder, registry.policy, read_only=True)
            except Exception as exc:
                logger.warning("cannot open the writer's collection", extra={"collection": name, "error": str(exc)})
                continue
            registry.add(fresh)
            service.load_errors.pop(f"collection '{name}'", None)
            if fresh.config.embedder not in service.embedders:
                service.load_errors[f"collection '{name}'"] = (
                    f"its embedder '{fresh.config.embedder}' is not loaded; configure it in RETRIEVER_EMBEDDERS"
                )
            info = fresh.info()
            service.metrics.sizes(name, info.documents, info.chunks)
            self._waiting.pop(name, None)
            if current is not None:
                self._retired.append(current)
            changed.append(name)
            logger.info("followed the writer", extra={"collection": name, "generation": fresh.generation})
        return changed

    async def _stale(self, collection: Collection) -> bool:
        """Has the writer committed since ``collection`` was read, and is the new state worth loading now?"""
        generation = await asyncio.to_thread(collection.stored_generation)
        if generation == collection.generation:
            return False
        if collection.index_kind == "flat" or await asyncio.to_thread(collection.index_file_exists, generation):
            return True
        # An HNSW index: wait a while for the writer's index file rather than build one here.
        waited_for, since = self._waiting.get(collection.name, (generation, time.monotonic()))
        if waited_for != generation:
            since = time.monotonic()
        self._waiting[collection.name] = (generation, since)
        settings = self.service.settings
        return time.monotonic() - since >= settings.index_flush_interval_s + settings.reload_interval_s
