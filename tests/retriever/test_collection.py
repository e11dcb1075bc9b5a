"""A collection on real FAISS and a real SQLite file, fed vectors made up from the text (a stand-in embedder, so
that hundreds of chunks cost nothing): flat and HNSW indexes, tombstones, rebuilds and persistence. The real
embedder is exercised end to end in test_service.py and test_api.py."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pytest

from retriever.collection import Collection, IndexPolicy
from retriever.filters import parse_filter
from retriever.index import HNSWParams, VectorIndex
from retriever.schemas import DocumentIn
from retriever.store import CollectionConfig

DIM = 16


def vector_of(text: str) -> np.ndarray:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)
    vector = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return vector / np.linalg.norm(vector)


def queries(n: int, seed: int = 7) -> np.ndarray:
    vectors = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def docs(n: int, start: int = 0) -> list[DocumentIn]:
    return [
        DocumentIn(
            id=f"d{i:04d}",
            text=f"document number {i} says something",
            title=f"Doc {i}",
            metadata={"group": f"g{i % 5}", "tags": ["even" if i % 2 == 0 else "odd", f"t{i % 7}"]},
        )
        for i in range(start, start + n)
    ]


def upsert(collection: Collection, documents: list[DocumentIn]):  # type: ignore[no-untyped-def]
    plan = collection.plan(documents)
    vectors = np.stack([vector_of(text) for text in plan.inputs]) if plan.inputs else np.empty((0, DIM))
    return collection.commit(plan, vectors)


def make(tmp_path: Path, name: str, mode: str = "auto", policy: IndexPolicy | None = None) -> Collection:
    config = CollectionConfig(name, "made-up", DIM, 800, 120, mode)  # type: ignore[arg-type]
    return Collection.create(tmp_path / name, config, policy or IndexPolicy())


def results(collection: Collection, top_k: int = 10, **search: object) -> list[list[tuple[str, float]]]:
    return [
        [(hit.chunk_id, hit.score) for hit in collection.search(q, top_k, **search)]  # type: ignore[arg-type]
        for q in queries(12)
    ]


def ids(found: list[list[tuple[str, float]]]) -> list[list[str]]:
    return [[chunk_id for chunk_id, _ in hits] for hits in found]


def test_upsert_sorts_unchanged_metadata_only_and_changed(tmp_path: Path) -> None:
    collection = make(tmp_path, "c")
    first = upsert(collection, docs(3))
    assert (first.upserted, first.unchanged, first.chunks) == (3, 0, 3)

    same = collection.plan(docs(3))
    assert same.unchanged == 3 and same.documents == []

    retagged = docs(3)
    retagged[0] = retagged[0].model_copy(update={"metadata": {"group": "new"}})
    reworded = retagged[1].model_copy(update={"text": "entirely different words now"})
    retagged[1] = reworded
    plan = collection.plan(retagged)
    assert plan.unchanged == 1
    assert [(d.row.id, d.chunks is None) for d in plan.documents] == [("d0000", True), ("d0001", False)]
    assert len(plan.inputs) == 1  # only the reworded one is embedded
    result = upsert(collection, retagged)
    assert (result.upserted, result.unchanged, result.chunks) == (2, 1, 1)
    assert (
        collection.search(vector_of("Doc 0\n\ndocument number 0 says something"), 1, parse_filter({"group": "new"}))[
            0
        ].doc_id
        == "d0000"
    )
    assert (
        collection.search(vector_of("Doc 0\n\ndocument number 0 says something"), 3, parse_filter({"group": "g0"}))
        == []
    )
    top = collection.search(vector_of("Doc 1\n\nentirely different words now"), 1)[0]
    assert (top.doc_id, top.text) == ("d0001", "entirely different words now")
    assert collection.info().chunks == 3 and collection.info().documents == 3


def test_flat_and_hnsw_agree_through_deletes_and_rebuilds(tmp_path: Path) -> None:
    flat = make(tmp_path, "flat", "flat")
    hnsw = make(tmp_path, "hnsw", "hnsw")
    for collection in (flat, hnsw):
        upsert(collection, docs(150))
    assert (flat.index_kind, hnsw.index_kind) == ("flat", "hnsw")
    assert ids(results(flat)) == ids(results(hnsw))

    deleted = {f"d{i:04d}" for i in range(0, 150, 5)}
    for doc_id in sorted(deleted):
        assert flat.delete_document(doc_id) == 1
        assert hnsw.delete_document(doc_id) == 1
    assert (flat.tombstones, hnsw.tombstones) == (0, 30)
    after = results(hnsw)
    assert ids(after) == ids(results(flat))
    assert not {chunk_id.split("#")[0] for hits in ids(after) for chunk_id in hits} & deleted
    odd = parse_filter({"tags": "odd", "group": {"$in": ["g1", "g2"]}})
    assert ids(results(hnsw, clauses=odd)) == ids(results(flat, clauses=odd))

    assert hnsw.rebuild_needed() is None  # 30 of 150 is not past 0.2
    hnsw.delete_document("d0001")
    flat.delete_document("d0001")
    assert hnsw.rebuild_needed() == "hnsw"
    assert hnsw.rebuild("hnsw")
    assert hnsw.tombstones == 0 and hnsw.index_kind == "hnsw"
    assert ids(results(hnsw)) == ids(results(flat))


def test_auto_index_turns_hnsw_past_the_threshold(tmp_path: Path) -> None:
    policy = IndexPolicy(exact_max_chunks=20, hnsw=HNSWParams(m=16, ef_construction=64, ef_search=64))
    auto = make(tmp_path, "auto", "auto", policy)
    upsert(auto, docs(20))
    assert auto.rebuild_needed() is None and auto.index_kind == "flat"
    exact = results(auto)
    upsert(auto, docs(5, start=20))
    assert auto.rebuild_needed() == "hnsw"
    assert auto.rebuild("hnsw")
    assert auto.info().index == "hnsw" and auto.info().index_mode == "auto"
    flat = make(tmp_path, "reference", "flat")
    upsert(flat, docs(25))
    assert ids(results(auto)) == ids(results(flat))
    assert exact != results(auto)  # the five new chunks do show up


def test_hnsw_filter_still_returns_top_k(tmp_path: Path) -> None:
    """A filter that allows few chunks starves the HNSW graph walk (efSearch 1 here); the search then scores
    the allowed chunks exactly, so it still returns top_k hits, the same as the exact index."""
    policy = IndexPolicy(hnsw=HNSWParams(m=4, ef_construction=8, ef_search=1))
    hnsw = make(tmp_path, "hnsw", "hnsw", policy)
    flat = make(tmp_path, "flat", "flat")
    for collection in (hnsw, flat):
        upsert(collection, docs(400))
    rare = parse_filter({"tags": "t3", "group": "g2"})  # i % 7 == 3 and i % 5 == 2: 11 documents
    assert len(flat.search(queries(1)[0], 20, rare)) == 11
    for top_k in (5, 11, 20):
        got = results(hnsw, top_k=top_k, clauses=rare)
        assert all(len(hits) == min(top_k, 11) for hits in got)
        assert ids(got) == ids(results(flat, top_k=top_k, clauses=rare))


def test_vector_index_selector_excludes_everything_not_allowed() -> None:
    vectors = queries(50, seed=3)
    ids_ = np.arange(100, 150, dtype=np.int64)
    for kind in ("flat", "hnsw"):
        index = VectorIndex.build(DIM, kind, HNSWParams(), ids_, vectors)  # type: ignore[arg-type]
        allowed = np.array([101, 120, 149], dtype=np.int64)
        found = index.search(vectors[0], 10, allowed)
        assert sorted(chunk_id for chunk_id, _ in found) == [101, 120, 149]
        assert index.search(vectors[0], 10, np.array([], dtype=np.int64)) == []
        index.remove([100])
        assert 100 not in [chunk_id for chunk_id, _ in index.search(vectors[0], 5)]


def test_search_runs_on_one_thread_and_leaves_the_thread_count_as_it_was() -> None:
    """A single query searches without OpenMP's team; builds and adds on the same thread keep every core."""
    import faiss

    vectors = queries(200, seed=5)
    ids_ = np.arange(200, dtype=np.int64)
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        for kind in ("flat", "hnsw"):
            index = VectorIndex.build(DIM, kind, HNSWParams(), ids_, vectors)  # type: ignore[arg-type]
            found = index.search(vectors[17], 3)
            assert found[0][0] == 17 and found[0][1] == pytest.approx(1.0, abs=1e-5)
            assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(before)


def test_score_threshold_drops_weak_hits(tmp_path: Path) -> None:
    collection = make(tmp_path, "c")
    upsert(collection, docs(30))
    everything = collection.search(queries(1)[0], 20)
    cut = everything[5].score
    kept = collection.search(queries(1)[0], 20, score_threshold=cut)
    assert [h.chunk_id for h in kept] == [h.chunk_id for h in everything[:6]]
    assert all(h.score >= cut for h in kept)


def test_restart_gives_identical_results(tmp_path: Path) -> None:
    for mode in ("flat", "hnsw"):
        collection = make(tmp_path, mode, mode)
        upsert(collection, docs(60))
        for doc_id in ("d0003", "d0010", "d0042"):
            collection.delete_document(doc_id)
        before = results(collection)
        before_filtered = results(collection, clauses=parse_filter({"group": "g3"}))
        collection.close()
        with pytest.raises(RuntimeError, match="closed"):
            collection.search(queries(1)[0], 3)

        reopened = Collection.open(tmp_path / mode, IndexPolicy())
        assert reopened.index_kind == mode
        assert reopened.tombstones == (3 if mode == "hnsw" else 0)  # recomputed from the SQLite file
        assert results(reopened) == before
        assert results(reopened, clauses=parse_filter({"group": "g3"})) == before_filtered
        assert reopened.info().documents == 57
        reopened.close()


@pytest.mark.parametrize("damage", ["missing", "older generation", "garbage"])
def test_missing_stale_or_broken_index_file_is_rebuilt(
    tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    collection = make(tmp_path, "c", "flat")
    upsert(collection, docs(40))
    collection.flush()
    upsert(collection, docs(10, start=40))
    collection.delete_document("d0001")
    before = results(collection)
    collection.close()
    [current] = list((tmp_path / "c").glob("index-g*.faiss"))
    assert current.name == f"index-g{collection.generation}.faiss"
    if damage == "missing":
        current.unlink()
    elif damage == "older generation":  # as if the process died before writing the newest index
        current.rename(current.with_name("index-g1.faiss"))
    else:
        current.write_bytes(b"not a faiss index")

    with caplog.at_level(logging.INFO, logger="retriever.collection"):
        reopened = Collection.open(tmp_path / "c", IndexPolicy())
    assert any(r.getMessage() == "rebuilding the index from the stored vectors" for r in caplog.records)
    assert results(reopened) == before
    assert (tmp_path / "c" / current.name).is_file()  # the rebuilt index was written back
    assert [p.name for p in (tmp_path / "c").glob("index-g*.faiss")] == [current.name]
    reopened.close()
