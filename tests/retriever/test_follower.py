"""The read replica's follower in process: a writer and a reader RetrieverService on one data folder (real
embedder, FAISS, SQLite). A flat collection is followed at once; an HNSW one keeps serving its older generation
until the writer's index file of the new generation is there (or the wait runs out), so readers never build
HNSW graphs the writer is about to write anyway."""

from __future__ import annotations

import asyncio
from pathlib import Path

from retriever.follower import Follower
from retriever.schemas import CollectionSettings, DocumentIn, SearchRequest
from tests.retriever.conftest import ServiceFactory


async def test_flat_follows_at_once_and_hnsw_waits_for_the_writers_index_file(
    make_service: ServiceFactory, tmp_path: Path, kb_docs: list[DocumentIn]
) -> None:
    data = tmp_path / "shared"
    writer = await make_service(data, index_flush_interval_s=3600)
    await writer.put_collection("flat", CollectionSettings(index="flat"))
    await writer.put_collection("graph", CollectionSettings(index="hnsw"))
    reader = await make_service(data, read_only=True, index_flush_interval_s=3600, reload_interval_s=1)
    follower = Follower(reader)
    assert reader.registry.names() == ["flat", "graph"]
    assert await follower.sync() == []  # nothing changed

    await writer.upsert("flat", kb_docs[:3])
    await writer.upsert("graph", kb_docs[:3])
    assert await follower.sync() == ["flat"]  # HNSW: the writer has not written its index file yet
    assert reader.registry.collections["flat"].info().documents == 3
    assert reader.registry.collections["graph"].info().documents == 0

    writer.flush()  # the writer's periodic flush writes index-g<generation>.faiss
    assert await follower.sync() == ["graph"]
    graph = reader.registry.collections["graph"]
    assert graph.info().documents == 3 and graph.index_kind == "hnsw"
    hits = await reader.search("graph", SearchRequest(query="reset my password", top_k=2))
    assert hits.data and hits.data[0].doc_id in {d.id for d in kb_docs[:3]}
    # The reader wrote no index file: every file in the folders is the writer's (of its generations).
    for name in ("flat", "graph"):
        files = sorted(p.name for p in (data / name).glob("index-g*.faiss"))
        assert files == [f"index-g{writer.registry.collections[name].generation}.faiss"], files


async def test_hnsw_stops_waiting_when_the_writers_file_does_not_come(
    make_service: ServiceFactory, tmp_path: Path, kb_docs: list[DocumentIn]
) -> None:
    data = tmp_path / "shared"
    writer = await make_service(data, index_flush_interval_s=3600)
    await writer.put_collection("graph", CollectionSettings(index="hnsw"))
    # The reader waits index_flush_interval_s + reload_interval_s at most: here about zero.
    reader = await make_service(data, read_only=True, index_flush_interval_s=0.001, reload_interval_s=0.001)
    follower = Follower(reader)
    await writer.upsert("graph", kb_docs[:2])
    assert await follower.sync() == []  # starts waiting for the writer's file
    await asyncio.sleep(0.05)
    assert await follower.sync() == ["graph"]  # the wait ran out: rebuilt from the stored vectors
    assert reader.registry.collections["graph"].info().documents == 2
