"""A collection's source of truth: one SQLite file (stdlib ``sqlite3``, WAL) with its settings, documents and
chunks, vectors included. The FAISS index file beside it is a cache rebuilt from here when missing or stale.

``meta`` holds the settings and the *generation*, a counter bumped by every committed change; the index file
names the generation it reflects. Each change is one transaction. Chunk ids are ``AUTOINCREMENT`` row ids, so an
id is never reused and a stale index entry can never point at another chunk.

One connection, used from whichever thread holds the collection's lock (``check_same_thread=False``).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = ["ChunkRow", "CollectionConfig", "CollectionStore", "DocumentRow", "StoredDocument"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    id           TEXT PRIMARY KEY,
    title        TEXT,
    source       TEXT,
    metadata     TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    record_hash  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id   TEXT NOT NULL REFERENCES documents (id) ON DELETE CASCADE,
    chunk_no INTEGER NOT NULL,
    text     TEXT NOT NULL,
    vector   BLOB NOT NULL,
    UNIQUE (doc_id, chunk_no)
);
"""


@dataclass(frozen=True)
class CollectionConfig:
    name: str
    embedder: str
    dimension: int
    chunk_size: int
    chunk_overlap: int
    index_mode: Literal["auto", "flat", "hnsw"]


@dataclass(frozen=True)
class DocumentRow:
    """A document as written: ``content_hash`` covers what was embedded (title and text), ``record_hash`` all
    of it (source and metadata too)."""

    id: str
    title: str | None
    source: str | None
    metadata: dict[str, Any]
    content_hash: str
    record_hash: str


@dataclass(frozen=True)
class ChunkRow:
    chunk_no: int
    text: str
    vector: np.ndarray


@dataclass(frozen=True)
class StoredDocument:
    """What the collection keeps in memory about a stored document."""

    id: str
    metadata: dict[str, Any]
    content_hash: str
    record_hash: str
    chunk_ids: tuple[int, ...]


class CollectionStore:
    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._db = connection
        self.path = path

    @classmethod
    def _connect(cls, path: Path, *, read_only: bool = False) -> sqlite3.Connection:
        if read_only:
            # A read replica's connection: SQLite refuses any write on it. It reads the writer's WAL (same
            # host: the -shm file is shared memory), so each read transaction sees the latest commit.
            return sqlite3.connect(
                f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
            )
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    @classmethod
    def create(cls, path: Path, config: CollectionConfig) -> CollectionStore:
        db = cls._connect(path)
        with db:
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA.split(";"):  # not executescript: it would commit
                if statement.strip():
                    db.execute(statement)
            db.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)",
                [
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("config", json.dumps(asdict(config))),
                    ("generation", "0"),
                ],
            )
        return cls(db, path)

    @classmethod
    def open(cls, path: Path, *, read_only: bool = False) -> CollectionStore:
        """Raises ``ValueError`` for a file that is not a collection of a known schema version. ``read_only``:
        a connection that cannot write (a read replica's)."""
        if not path.is_file():
            raise ValueError(f"{path} does not exist")
        db = cls._connect(path, read_only=read_only)
        try:
            version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ValueError(f"{path} is not a retriever collection: {exc}") from None
        if version is None or int(version[0]) != SCHEMA_VERSION:
            db.close()
            raise ValueError(f"{path} has schema version {version and version[0]}, expected {SCHEMA_VERSION}")
        return cls(db, path)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: everything read inside it (generation, documents, vectors) is of one commit."""
        self._db.execute("BEGIN")
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    def config(self) -> CollectionConfig:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        return CollectionConfig(**json.loads(row[0]))

    def generation(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])

    def documents(self) -> Iterator[StoredDocument]:
        """Every document with its chunk ids (in chunk order)."""
        chunk_ids: dict[str, list[int]] = {}
        for doc_id, chunk_id in self._db.execute("SELECT doc_id, id FROM chunks ORDER BY doc_id, chunk_no"):
            chunk_ids.setdefault(doc_id, []).append(chunk_id)
        rows = self._db.execute("SELECT id, metadata, content_hash, record_hash FROM documents ORDER BY id")
        for doc_id, metadata, content_hash, record_hash in rows:
            yield StoredDocument(
                doc_id, json.loads(metadata), content_hash, record_hash, tuple(chunk_ids.get(doc_id, ()))
            )

    def vectors(self, dimension: int) -> tuple[np.ndarray, np.ndarray]:
        """Every chunk's id and vector, by id."""
        ids: list[int] = []
        blobs: list[bytes] = []
        for chunk_id, blob in self._db.execute("SELECT id, vector FROM chunks ORDER BY id"):
            ids.append(chunk_id)
            blobs.append(blob)
        vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dimension)
        return np.asarray(ids, dtype=np.int64), vectors

    def write(
        self, documents: Sequence[tuple[DocumentRow, Sequence[ChunkRow] | None]], deleted: Sequence[str] = ()
    ) -> tuple[int, list[list[int]]]:
        """One transaction: store each document (replacing its chunks by the given ones, or keeping them when
        ``None``), delete the ``deleted`` ids, bump the generation. Returns the new generation and the new chunk
        ids of each document (empty where its chunks were kept)."""
        new_ids: list[list[int]] = []
        db = self._db
        with db:
            db.execute("BEGIN IMMEDIATE")
            for doc, chunks in documents:
                db.execute(
                    "INSERT INTO documents (id, title, source, metadata, content_hash, record_hash) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET title = excluded.title, "
                    "source = excluded.source, metadata = excluded.metadata, content_hash = excluded.content_hash, "
                    "record_hash = excluded.record_hash",
                    (
                        doc.id,
                        doc.title,
                        doc.source,
                        json.dumps(doc.metadata, ensure_ascii=False),
                        doc.content_hash,
                        doc.record_hash,
                    ),
                )
                ids: list[int] = []
                if chunks is not None:
                    db.execute("DELETE FROM chunks WHERE doc_id = ?", (doc.id,))
                    for chunk in chunks:
                        cursor = db.execute(
                            "INSERT INTO chunks (doc_id, chunk_no, text, vector) VALUES (?, ?, ?, ?)",
                            (
                                doc.id,
                                chunk.chunk_no,
                                chunk.text,
                                np.ascontiguousarray(chunk.vector, dtype=np.float32).tobytes(),
                            ),
                        )
                        ids.append(int(cursor.lastrowid or 0))
                new_ids.append(ids)
            for doc_id in deleted:
                db.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
            db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
            generation = int(db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])
        return generation, new_ids

    def hits(self, chunk_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """The rows behind search hits, by chunk id."""
        found: dict[int, dict[str, Any]] = {}
        if not chunk_ids:
            return found
        marks = ", ".join("?" * len(chunk_ids))
        rows = self._db.execute(
            "SELECT c.id, c.doc_id, c.chunk_no, c.text, d.title, d.source, d.metadata FROM chunks c "
            f"JOIN documents d ON d.id = c.doc_id WHERE c.id IN ({marks})",
            list(chunk_ids),
        )
        for chunk_id, doc_id, chunk_no, text, title, source, metadata in rows:
            found[chunk_id] = {
                "doc_id": doc_id,
                "chunk_id": f"{doc_id}#{chunk_no}",
                "text": text,
                "title": title,
                "source": source,
                "metadata": json.loads(metadata),
            }
        return found

    def close(self) -> None:
        self._db.close()
