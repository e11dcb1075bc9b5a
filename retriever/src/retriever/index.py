"""The FAISS side of a collection: the only module that imports faiss.

Vectors are L2-normalised, so inner product is cosine similarity. Ids are the chunks' SQLite row ids, kept by an
``IndexIDMap2`` around one of two indexes:

- ``flat`` (``IndexFlatIP``): exact; removing vectors compacts it at once.
- ``hnsw`` (``IndexHNSWFlat``): approximate and fast on large collections. HNSW cannot remove vectors, so a
  removed id becomes a *tombstone*: it stays in the graph and every search excludes it through an
  ``IDSelectorNot``; the collection rebuilds the index once tombstones pass a fraction of it.

A filtered search hands FAISS the allowed ids (``IDSelectorBatch``). HNSW may then return fewer than ``k`` hits
although at least ``k`` vectors are allowed (the graph walk runs out of allowed neighbours); the search then
scores the allowed vectors exactly, so a filter that matches ``k`` chunks always yields ``k`` hits.

Index files are plain FAISS files, written atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np

__all__ = ["HNSWParams", "IndexKind", "SeedIndexError", "VectorIndex", "read_seed_vectors", "write_atomically"]

IndexKind = Literal["flat", "hnsw"]


@dataclass(frozen=True)
class HNSWParams:
    m: int = 32
    ef_construction: int = 200
    ef_search: int = 256


class SeedIndexError(ValueError):
    """The seed's FAISS file cannot be read or its vectors cannot be extracted."""


def _ids(ids: np.ndarray | list[int]) -> np.ndarray:
    return np.ascontiguousarray(ids, dtype=np.int64)


@contextmanager
def _one_omp_thread() -> Iterator[None]:
    """Run one query on the calling thread alone. FAISS parallelises over queries, so a single query gains
    nothing from OpenMP's team, while waking it costs more than the HNSW walk and its spinning threads take
    the cores the query embedder needs. OpenMP's thread count is per calling thread: builds and adds, on
    other calls, keep every core."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _vectors(vectors: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(vectors, dtype=np.float32)


class VectorIndex:
    """One collection's vectors. Not thread-safe: the collection serialises calls with its lock."""

    def __init__(
        self, index: faiss.IndexIDMap2, kind: IndexKind, params: HNSWParams, tombstones: set[int] | None = None
    ) -> None:
        self._index = index
        self.kind: IndexKind = kind
        self.params = params
        self._tombstones = tombstones or set()
        self._not_tombstones: tuple[faiss.IDSelector, ...] | None = None
        if kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efSearch = params.ef_search

    @classmethod
    def empty(cls, dimension: int, kind: IndexKind, params: HNSWParams) -> VectorIndex:
        if kind == "flat":
            inner = faiss.IndexFlatIP(dimension)
        else:
            inner = faiss.IndexHNSWFlat(dimension, params.m, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = params.ef_construction
        return cls(faiss.IndexIDMap2(inner), kind, params)

    @classmethod
    def build(
        cls, dimension: int, kind: IndexKind, params: HNSWParams, ids: np.ndarray, vectors: np.ndarray
    ) -> VectorIndex:
        index = cls.empty(dimension, kind, params)
        if len(ids):
            index.add(ids, vectors)
        return index

    @classmethod
    def load(cls, path: Path, params: HNSWParams) -> VectorIndex:
        """Raises ``ValueError`` for a file that is not one of ours."""
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        if not isinstance(index, faiss.IndexIDMap2):
            raise ValueError(f"{path} is not an id-mapped index")
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSWFlat):
            return cls(index, "hnsw", params)
        if isinstance(inner, faiss.IndexFlatIP):
            return cls(index, "flat", params)
        raise ValueError(f"{path} holds a {type(inner).__name__}, not a flat or HNSW index")

    @property
    def dimension(self) -> int:
        return int(self._index.d)

    @property
    def size(self) -> int:
        """Vectors in the index, tombstones included."""
        return int(self._index.ntotal)

    @property
    def tombstones(self) -> int:
        return len(self._tombstones)

    def ids(self) -> np.ndarray:
        """Every id in the index, tombstones included, in insertion order."""
        ids: np.ndarray = faiss.vector_to_array(self._index.id_map).astype(np.int64, copy=False)
        return ids

    def set_tombstones(self, ids: set[int]) -> None:
        """Declare which ids of an HNSW index are removed (after loading it from a file)."""
        self._tombstones = set(ids)
        self._not_tombstones = None

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self._index.add_with_ids(_vectors(vectors), _ids(ids))

    def remove(self, ids: list[int]) -> None:
        if not ids:
            return
        if self.kind == "flat":
            self._index.remove_ids(faiss.IDSelectorBatch(_ids(ids)))
        else:
            self._tombstones.update(ids)
            self._not_tombstones = None

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        if not len(ids):
            return np.empty((0, self.dimension), dtype=np.float32)
        return np.asarray(self._index.reconstruct_batch(_ids(ids)), dtype=np.float32)

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Up to ``k`` (id, score) pairs, best first, among ``allowed`` ids if given (which must hold no
        tombstone). Fewer than ``k`` only when fewer vectors qualify."""
        query = _vectors(query).reshape(1, -1)
        if allowed is not None and not len(allowed):
            return []
        keep: list[object] = []  # selectors must outlive the search: FAISS holds raw pointers to them
        selector = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(_ids(allowed))
            keep.append(selector)
        elif self._tombstones:
            if self._not_tombstones is None:
                dead = faiss.IDSelectorBatch(_ids(sorted(self._tombstones)))
                self._not_tombstones = (dead, faiss.IDSelectorNot(dead))
            selector = self._not_tombstones[1]
        if self.kind == "flat":
            params = faiss.SearchParameters(sel=selector) if selector is not None else None
        else:
            params = faiss.SearchParametersHNSW(efSearch=max(self.params.ef_search, k))
            if selector is not None:
                params.sel = selector
        with _one_omp_thread():
            scores, labels = self._index.search(query, k, params=params)
        hits = [(int(label), float(score)) for label, score in zip(labels[0], scores[0], strict=True) if label >= 0]
        qualifying = len(allowed) if allowed is not None else self.size - len(self._tombstones)
        if self.kind == "hnsw" and len(hits) < min(k, qualifying):
            candidates = allowed if allowed is not None else self._live_ids()
            hits = self.exact(query, candidates, k)
        return hits

    def exact(self, query: np.ndarray, ids: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` best of ``ids`` by exact inner product, ties broken by id."""
        ids = _ids(ids)
        if not len(ids):
            return []
        scores = self.vectors(ids) @ _vectors(query).reshape(-1)
        order = np.lexsort((ids, -scores))[:k]
        return [(int(ids[i]), float(scores[i])) for i in order]

    def _live_ids(self) -> np.ndarray:
        ids = self.ids()
        if not self._tombstones:
            return ids
        return ids[~np.isin(ids, _ids(sorted(self._tombstones)))]

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """The ids and vectors of every vector not removed: what a rebuild starts from."""
        ids = self._live_ids()
        return ids, self.vectors(ids)

    def serialize(self) -> bytes:
        data: bytes = faiss.serialize_index(self._index).tobytes()
        return data


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old file or the new one, never a mix."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with temporary.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def read_seed_vectors(data: bytes, source: str) -> np.ndarray:
    """Every vector stored in a FAISS index file's bytes, in index order (row ``i`` is the ``i``-th vector added).

    Raises :class:`SeedIndexError` when the bytes are not a FAISS index or the index keeps no vectors it can
    give back (product quantisers, for one, keep only approximations, and those are refused too).
    """
    try:
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
    except RuntimeError as exc:
        raise SeedIndexError(f"{source} is not a FAISS index: {str(exc).splitlines()[0]}") from None
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2) else index
    if not isinstance(inner, faiss.IndexFlat | faiss.IndexHNSWFlat | faiss.IndexIVFFlat):
        raise SeedIndexError(f"{source} holds a {type(inner).__name__}, which keeps no exact vectors")
    if isinstance(inner, faiss.IndexIVFFlat):
        inner.make_direct_map()
    if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
        # vectors in the order of their ids (the seed's record numbers), not of insertion
        ids = faiss.vector_to_array(index.id_map)
        order = np.argsort(ids, kind="stable")
        if not np.array_equal(ids[order], np.arange(len(ids))):
            raise SeedIndexError(f"{source} maps its vectors to ids other than 0..{len(ids) - 1}")
        vectors = inner.reconstruct_n(0, inner.ntotal)
        return np.ascontiguousarray(vectors[order], dtype=np.float32)
    return np.ascontiguousarray(inner.reconstruct_n(0, inner.ntotal), dtype=np.float32)
