"""One collection: its SQLite store, its FAISS index, and what it keeps in memory to answer searches quickly
(each document's hashes and chunk ids, the metadata inverted index).

Thread safety. Every method may be called from any thread. A per-collection lock guards the in-memory state, the
SQLite connection and the FAISS index, and is held only for the quick parts: reading hashes, one SQLite
transaction plus the FAISS add/remove, one FAISS search plus fetching its rows. Slow work happens outside it:
chunking and embedding (between :meth:`plan` and :meth:`commit`), building an HNSW index (:meth:`rebuild`) and
writing the index file (:meth:`flush`). So searches go on while an ingest embeds, and see either all of a
commit or none of it.

Writers (plan/commit, delete, rebuild) must not overlap on one collection: a plan is only valid against the state
it was made from. :class:`retriever.serving.RetrieverService` runs them one at a time per collection.

Persistence. SQLite is the source of truth; the FAISS file ``index-g{generation}.faiss`` is a cache of the
state after the SQLite generation it names. On open, a missing file, a file of another generation or a file that
does not match the stored chunks is replaced by an index rebuilt from the stored vectors, so results after a
restart are the same as before it. An HNSW index's tombstones are not stored: they are the ids in the index file
that the SQLite file no longer has.

Size: about 470 lines, over the project's ~400, because the class is one lock's worth of state: what it guards
(documents in memory, the SQLite connection, the FAISS index, the generation) is read and written together, and
the lock's rules above hold only while they stay in one place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retriever.chunking import split_text
from retriever.filters import Clause, Key, MetadataIndex, metadata_keys
from retriever.index import HNSWParams, IndexKind, VectorIndex, write_atomically
from retriever.schemas import CollectionInfo, DocumentIn, Hit, UpsertResult
from retriever.store import ChunkRow, CollectionConfig, CollectionStore, DocumentRow

__all__ = [
    "DB_FILE",
    "Collection",
    "CollectionClosed",
    "IndexPolicy",
    "PreparedDocument",
    "UpsertPlan",
    "content_hash",
    "embedding_input",
]

logger = logging.getLogger(__name__)

DB_FILE = "collection.sqlite3"
_INDEX_GLOB = "index-g*.faiss"


class CollectionClosed(RuntimeError):
    """The collection was deleted (or the service is shutting down) while the call waited."""


@dataclass(frozen=True)
class IndexPolicy:
    """When to use which index, from the service settings."""

    exact_max_chunks: int = 20000
    hnsw: HNSWParams = field(default_factory=HNSWParams)
    tombstone_rebuild_fraction: float = 0.2


def embedding_input(title: str | None, chunk: str) -> str:
    """What is embedded for a chunk: the document's title, a blank line, the chunk (the title alone often names
    the topic that a chunk from the middle of the document never mentions)."""
    return f"{title}\n\n{chunk}" if title else chunk


def content_hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class PreparedDocument:
    row: DocumentRow
    chunks: list[str] | None  # None: same title and text as stored, only source or metadata change
    inputs: list[str]  # what to embed, one per chunk
    vectors: np.ndarray | None = None  # given: use these instead of embedding (seed import)


@dataclass(frozen=True)
class UpsertPlan:
    unchanged: int
    documents: list[PreparedDocument]

    @property
    def inputs(self) -> list[str]:
        """Every text to embed, in document order."""
        return [text for doc in self.documents if doc.vectors is None for text in doc.inputs]


@dataclass(frozen=True)
class _Doc:
    content_hash: str
    record_hash: str
    chunk_ids: tuple[int, ...]
    keys: frozenset[Key]


class Collection:
    def __init__(
        self,
        folder: Path,
        store: CollectionStore,
        config: CollectionConfig,
        policy: IndexPolicy,
        *,
        read_only: bool = False,
    ) -> None:
        self.folder = folder
        self.read_only = read_only  # a read replica's copy: never writes its index file (the writer does)
        self.config = config
        self.name = config.name
        self._store = store
        self._policy = policy
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._docs: dict[str, _Doc] = {}
        self._metadata = MetadataIndex()
        self._chunks = 0
        self._generation = store.generation()
        self._dirty = False
        self._changes = 0  # writes since open: a rebuild checks none slipped in while it built
        self._closed = False
        self._index = VectorIndex.empty(config.dimension, "flat", policy.hnsw)
        self._load_documents()

    def _load_documents(self) -> None:
        """The in-memory document table and metadata index, from the SQLite file."""
        self._docs.clear()
        self._metadata = MetadataIndex()
        self._chunks = 0
        for stored in self._store.documents():
            doc = _Doc(stored.content_hash, stored.record_hash, stored.chunk_ids, metadata_keys(stored.metadata))
            self._docs[stored.id] = doc
            self._metadata.add(doc.keys, doc.chunk_ids)
            self._chunks += len(doc.chunk_ids)

    # -- opening and closing -------------------------------------------------------------------------------------

    @classmethod
    def create(cls, folder: Path, config: CollectionConfig, policy: IndexPolicy) -> Collection:
        folder.mkdir(parents=True)
        collection = cls(folder, CollectionStore.create(folder / DB_FILE, config), config, policy)
        collection._index = VectorIndex.empty(config.dimension, collection._wanted_kind(0), policy.hnsw)
        collection._dirty = True
        collection.flush()
        return collection

    @classmethod
    def open(cls, folder: Path, policy: IndexPolicy, *, read_only: bool = False) -> Collection:
        """Raises ``ValueError`` when the folder holds no readable collection. ``read_only``: a read replica's
        copy of a collection another process writes (a read-only connection, no index file written; the
        documents and the vectors are read in one transaction, so they are of one commit)."""
        store = CollectionStore.open(folder / DB_FILE, read_only=read_only)
        try:
            with store.snapshot():
                collection = cls(folder, store, store.config(), policy, read_only=read_only)
                collection._index = collection._load_index()
        except BaseException:
            store.close()
            raise
        return collection

    def _live_ids(self) -> set[int]:
        return {chunk_id for doc in self._docs.values() for chunk_id in doc.chunk_ids}

    def _load_index(self) -> VectorIndex:
        path = self._index_path(self._generation)
        wanted = self._wanted_kind(self._chunks)
        reason = "it is missing (or of an older generation)"
        if path.is_file():
            try:
                index = VectorIndex.load(path, self._policy.hnsw)
                in_index = set(index.ids().tolist())
                live = self._live_ids()
                if index.dimension != self.config.dimension or not live <= in_index:
                    reason = "it does not match the stored chunks"
                elif index.kind != wanted:
                    reason = f"the collection now wants a {wanted} index"
                elif index.kind == "flat" and in_index != live:
                    reason = "it holds removed chunks"
                else:
                    index.set_tombstones(in_index - live)
                    return index
            except ValueError as exc:
                reason = str(exc)
        logger.info(
            "rebuilding the index from the stored vectors",
            extra={"collection": self.name, "reason": reason, "chunks": self._chunks, "index": wanted},
        )
        ids, vectors = self._store.vectors(self.config.dimension)
        index = VectorIndex.build(self.config.dimension, wanted, self._policy.hnsw, ids, vectors)
        self._index = index
        self._dirty = True
        self.flush()
        return index

    def _index_path(self, generation: int) -> Path:
        return self.folder / f"index-g{generation}.faiss"

    def flush(self) -> bool:
        """Write the index file if the index changed since the last write; ``True`` when it wrote one."""
        if self.read_only:
            return False
        with self._flush_lock:
            with self._lock:
                if not self._dirty or self._closed:
                    return False
                data, generation = self._index.serialize(), self._generation
                self._dirty = False
            try:
                write_atomically(self._index_path(generation), data)
            except BaseException:
                with self._lock:
                    self._dirty = True
                raise
            for old in self.folder.glob(_INDEX_GLOB):
                if old.name != self._index_path(generation).name:
                    old.unlink(missing_ok=True)
            return True

    def close(self) -> None:
        """Write the index if it changed, then release the SQLite file. Later calls raise CollectionClosed."""
        self.flush()
        with self._lock:
            if not self._closed:
                self._closed = True
                self._store.close()

    def _check_open(self) -> None:
        if self._closed:
            raise CollectionClosed(f"collection '{self.name}' is closed")

    # -- reading -------------------------------------------------------------------------------------------------

    def info(self) -> CollectionInfo:
        """Sizes and settings. Takes no lock (it is called on the event loop, which must not wait for a commit):
        the counts are read as they are at that instant."""
        return CollectionInfo(
            name=self.name,
            embedder=self.config.embedder,
            dimension=self.config.dimension,
            documents=len(self._docs),
            chunks=self._chunks,
            index=self._index.kind,
            index_mode=self.config.index_mode,
            chunk_size=self.config.chunk_size,
            chunk_overlap=self.config.chunk_overlap,
        )

    @property
    def index_kind(self) -> IndexKind:
        return self._index.kind

    @property
    def tombstones(self) -> int:
        return self._index.tombstones

    @property
    def generation(self) -> int:
        return self._generation

    def stored_generation(self) -> int:
        """The generation the SQLite file holds now (another process may have written since this one read it)."""
        with self._lock:
            self._check_open()
            return self._store.generation()

    def index_file_exists(self, generation: int) -> bool:
        return self._index_path(generation).is_file()

    def search(
        self, query: np.ndarray, top_k: int, clauses: list[Clause] | None = None, score_threshold: float | None = None
    ) -> list[Hit]:
        """The ``top_k`` chunks closest to the query vector among those the clauses allow, best first (ties by
        chunk id); hits scoring below ``score_threshold`` are left out."""
        with self._lock:
            self._check_open()
            allowed = None
            if clauses:
                matched = self._metadata.match(clauses)
                if not matched:
                    return []
                allowed = np.fromiter(matched, dtype=np.int64, count=len(matched))
            found = self._index.search(query, top_k, allowed)
            rows = self._store.hits([chunk_id for chunk_id, _ in found])
        found.sort(key=lambda pair: (-pair[1], pair[0]))
        # A read replica's copy may name chunks its writer has deleted since the copy was read (the rows come
        # from the live file): they are left out until the next reload drops them from the index.
        return [
            Hit(score=score, **rows[chunk_id])
            for chunk_id, score in found
            if chunk_id in rows and (score_threshold is None or score >= score_threshold)
        ]

    # -- writing -------------------------------------------------------------------------------------------------

    def plan(self, documents: Sequence[DocumentIn], vectors: np.ndarray | None = None) -> UpsertPlan:
        """Sort the documents into unchanged, changed metadata only, and new or changed text (chunked here).

        With ``vectors`` (row ``i`` for ``documents[i]``, from a seed's index), a new or changed document is one
        chunk, whatever its length, stored with its given vector instead of being split and embedded.
        """
        tag = "given vector" if vectors is not None else "embedded"
        hashed = [
            (
                doc,
                content_hash(tag, doc.title, doc.text),
                content_hash(tag, doc.title, doc.text, doc.source, doc.metadata),
            )
            for doc in documents
        ]
        with self._lock:
            self._check_open()
            current = {doc.id: self._docs.get(doc.id) for doc in documents}
        unchanged = 0
        prepared = []
        for i, (doc, text_hash, record_hash) in enumerate(hashed):
            stored = current[doc.id]
            row = DocumentRow(doc.id, doc.title, doc.source, doc.metadata, text_hash, record_hash)
            if stored is not None and stored.record_hash == record_hash:
                unchanged += 1
            elif stored is not None and stored.content_hash == text_hash:
                prepared.append(PreparedDocument(row, None, []))
            elif vectors is not None:
                prepared.append(PreparedDocument(row, [doc.text], [], vectors[i : i + 1]))
            else:
                chunks = [
                    chunk.text for chunk in split_text(doc.text, self.config.chunk_size, self.config.chunk_overlap)
                ]
                prepared.append(PreparedDocument(row, chunks, [embedding_input(doc.title, c) for c in chunks]))
        return UpsertPlan(unchanged, prepared)

    def commit(self, plan: UpsertPlan, vectors: np.ndarray) -> UpsertResult:
        """Store a plan with the vectors of ``plan.inputs`` (in order): one SQLite transaction, then the FAISS and
        in-memory updates, all under the lock."""
        writes: list[tuple[DocumentRow, list[ChunkRow] | None]] = []
        offset = 0
        for doc in plan.documents:
            if doc.chunks is None:
                writes.append((doc.row, None))
                continue
            if doc.vectors is not None:
                doc_vectors = doc.vectors
            else:
                doc_vectors = vectors[offset : offset + len(doc.chunks)]
                offset += len(doc.chunks)
            writes.append((doc.row, [ChunkRow(n, text, doc_vectors[n]) for n, text in enumerate(doc.chunks)]))
        if offset != len(vectors):
            raise ValueError(f"got {len(vectors)} vectors for {offset} chunks")
        added = 0
        with self._lock:
            self._check_open()
            for doc in plan.documents:
                stored = self._docs.get(doc.row.id)
                if doc.chunks is None and (stored is None or stored.content_hash != doc.row.content_hash):
                    raise RuntimeError(f"document {doc.row.id!r} changed while an upsert of it was prepared")
            if not writes:
                return UpsertResult(upserted=0, unchanged=plan.unchanged, chunks=0)
            generation, new_ids = self._store.write(writes)
            try:
                for (row, chunks), ids in zip(writes, new_ids, strict=True):
                    added += self._apply(row, chunks, ids)
            except BaseException:
                logger.exception(
                    "index update failed after the SQLite commit; reloading from the SQLite file",
                    extra={"collection": self.name},
                )
                self._reload()
                raise
            finally:
                self._generation = generation
                self._dirty = True
                self._changes += 1
        return UpsertResult(upserted=len(writes), unchanged=plan.unchanged, chunks=added)

    def _apply(self, row: DocumentRow, chunks: list[ChunkRow] | None, ids: list[int]) -> int:
        stored = self._docs.get(row.id)
        keys = metadata_keys(row.metadata)
        if stored is not None:
            self._metadata.remove(stored.keys, stored.chunk_ids)
        if chunks is None:
            assert stored is not None
            chunk_ids = stored.chunk_ids
        else:
            if stored is not None:
                self._index.remove(list(stored.chunk_ids))
                self._chunks -= len(stored.chunk_ids)
            chunk_ids = tuple(ids)
            if chunks:
                self._index.add(np.asarray(ids, dtype=np.int64), np.stack([chunk.vector for chunk in chunks]))
            self._chunks += len(chunk_ids)
        self._metadata.add(keys, chunk_ids)
        self._docs[row.id] = _Doc(row.content_hash, row.record_hash, chunk_ids, keys)
        return 0 if chunks is None else len(chunks)

    def delete_document(self, doc_id: str) -> int | None:
        """Remove a document and its chunks; the number of chunks removed, or ``None`` if there was no such
        document."""
        with self._lock:
            self._check_open()
            stored = self._docs.get(doc_id)
            if stored is None:
                return None
            self._generation, _ = self._store.write([], deleted=[doc_id])
            del self._docs[doc_id]
            self._metadata.remove(stored.keys, stored.chunk_ids)
            self._index.remove(list(stored.chunk_ids))
            self._chunks -= len(stored.chunk_ids)
            self._dirty = True
            self._changes += 1
            return len(stored.chunk_ids)

    def _reload(self) -> None:
        """Rebuild the in-memory state from the SQLite file (after a failure left it out of step). Lock held."""
        self._load_documents()
        ids, vectors = self._store.vectors(self.config.dimension)
        self._index = VectorIndex.build(self.config.dimension, self._index.kind, self._policy.hnsw, ids, vectors)

    # -- index upkeep --------------------------------------------------------------------------------------------

    def _wanted_kind(self, chunks: int) -> IndexKind:
        mode = self.config.index_mode
        if mode != "auto":
            return mode
        return "hnsw" if chunks > self._policy.exact_max_chunks else "flat"

    def rebuild_needed(self) -> IndexKind | None:
        """The kind of index to rebuild now, if any: a flat index that outgrew ``exact_max_chunks`` becomes HNSW;
        an HNSW index whose tombstones pass the fraction is rebuilt (as the size now asks)."""
        with self._lock:
            wanted = self._wanted_kind(self._chunks)
            index = self._index
            if index.kind == "flat" and wanted == "hnsw":
                return "hnsw"
            if index.kind == "hnsw" and index.tombstones > self._policy.tombstone_rebuild_fraction * index.size:
                return wanted
            return None

    def rebuild(self, kind: IndexKind) -> bool:
        """Build a fresh ``kind`` index from the live vectors outside the lock (searches use the old one
        meanwhile) and swap it in. ``False`` if a write slipped in while it built (then nothing changes)."""
        with self._lock:
            self._check_open()
            changes = self._changes
            ids, vectors = self._index.live()
        logger.info("building a new index", extra={"collection": self.name, "index": kind, "chunks": len(ids)})
        fresh = VectorIndex.build(self.config.dimension, kind, self._policy.hnsw, ids, vectors)
        with self._lock:
            self._check_open()
            if self._changes != changes:
                logger.warning(
                    "index rebuild dropped: the collection changed meanwhile", extra={"collection": self.name}
                )
                return False
            self._index = fresh
            self._dirty = True
        return True
