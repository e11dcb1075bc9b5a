"""The retriever's in-process API with the real embedder and real FAISS: search quality on the IT-support
articles, filters, thresholds, upserts, deletes, restarts and searches during an ingest."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from chat_common.errors import APIError
from retriever.schemas import DocumentIn, SearchRequest
from retriever.serving import RetrieverService
from tests.retriever.conftest import ServiceFactory


def embedded_texts(service: RetrieverService) -> float:
    value = service.metrics.registry.get_sample_value(
        "retriever_embedded_texts_total", {"embedder": "all-minilm-l6-v2"}
    )
    return value or 0.0


async def search(service: RetrieverService, query: str, top_k: int = 4, **fields: object) -> list[dict[str, object]]:
    response = await service.search("kb", SearchRequest(query=query, top_k=top_k, **fields))  # type: ignore[arg-type]
    return [hit.model_dump() for hit in response.data]


async def test_password_question_finds_the_reset_article(make_service: ServiceFactory, kb_copy: Path) -> None:
    service = await make_service(kb_copy)
    hits = await search(service, "I forgot my password and cannot sign in, can I reset it myself?", top_k=3)
    assert "kb-0001" in [hit["doc_id"] for hit in hits]
    first = hits[0]
    assert set(first) == {"doc_id", "chunk_id", "text", "title", "source", "score", "metadata"}
    assert str(first["chunk_id"]).startswith(f"{first['doc_id']}#")
    assert first["metadata"]["category"] == "passwords"  # type: ignore[index]
    scores = [hit["score"] for hit in hits]
    assert scores == sorted(scores, reverse=True) and all(-1 <= s <= 1 for s in scores)  # type: ignore[operator]
    vpn = await search(service, "the VPN client will not connect from home", top_k=3)
    assert {hit["doc_id"] for hit in vpn} & {"kb-0007", "kb-0008", "kb-0012"}


async def test_filters_return_top_k_when_enough_chunks_match(make_service: ServiceFactory, kb_copy: Path) -> None:
    service = await make_service(kb_copy)
    question = "how do I reset my forgotten password"
    staff = await search(service, question, top_k=4, filter={"audience": "staff"})  # 5 chunks match, all off-topic
    assert len(staff) == 4 and {hit["doc_id"] for hit in staff} <= {"kb-0025", "kb-0031"}
    wifi = await search(service, question, top_k=4, filter={"category": "wifi"})  # only 2 chunks match
    assert [hit["doc_id"] for hit in wifi] == ["kb-0031", "kb-0031"]
    tagged = await search(service, question, top_k=10, filter={"tags": "NWL Connect"})
    assert {hit["doc_id"] for hit in tagged} == {"kb-0007", "kb-0008"} and len(tagged) == 6
    either = await search(service, question, top_k=20, filter={"category": {"$in": ["vpn", "mfa"]}})
    assert {hit["doc_id"] for hit in either} == {"kb-0007", "kb-0008", "kb-0012", "kb-0050"}
    both = await search(service, question, top_k=20, filter={"category": "vpn", "tags": {"$in": ["drops", "DNS"]}})
    assert {hit["doc_id"] for hit in both} == {"kb-0012"}
    assert await search(service, question, filter={"category": "nothing-like-this"}) == []
    with pytest.raises(APIError) as caught:
        await search(service, question, filter={"tags": ["a", "b"]})
    assert caught.value.status_code == 400 and caught.value.param == "filter"


async def test_score_threshold_leaves_out_weak_hits(make_service: ServiceFactory, kb_copy: Path) -> None:
    service = await make_service(kb_copy)
    question = "my account is locked after too many attempts"
    everything = await search(service, question, top_k=20)
    threshold = float(everything[3]["score"])  # type: ignore[arg-type]
    kept = await search(service, question, top_k=20, score_threshold=threshold)
    assert [h["chunk_id"] for h in kept] == [h["chunk_id"] for h in everything[:4]]
    assert await search(service, question, top_k=20, score_threshold=0.99) == []


async def test_upsert_skips_unchanged_and_replaces_changed(
    make_service: ServiceFactory, kb_copy: Path, articles: dict[str, DocumentIn]
) -> None:
    service = await make_service(kb_copy)
    before = embedded_texts(service)
    again = await service.upsert("kb", [articles["kb-0001"], articles["kb-0002"]])
    assert again.model_dump() == {"upserted": 0, "unchanged": 2, "chunks": 0}
    assert embedded_texts(service) == before  # nothing was embedded

    retagged = articles["kb-0003"].model_copy(update={"metadata": {"category": "lockouts", "tags": ["new"]}})
    result = await service.upsert("kb", [retagged])
    assert result.model_dump() == {"upserted": 1, "unchanged": 0, "chunks": 0}
    assert embedded_texts(service) == before  # same title and text: only the metadata changed
    moved = await search(service, "account locked", top_k=10, filter={"category": "lockouts"})
    assert {hit["doc_id"] for hit in moved} == {"kb-0003"} and len(moved) == 3
    assert await search(service, "account locked", filter={"tags": "account lockout"}) == []

    rewritten = articles["kb-0002"].model_copy(
        update={
            "title": "Coffee machine descaling",
            "text": "Fill the tank with descaler, run two rinse cycles and wait.",
        }
    )
    result = await service.upsert("kb", [rewritten])
    assert result.model_dump() == {"upserted": 1, "unchanged": 0, "chunks": 1}
    coffee = await search(service, "how do I descale the coffee machine", top_k=1)
    assert coffee[0]["doc_id"] == "kb-0002" and coffee[0]["chunk_id"] == "kb-0002#0"
    everything = await search(service, "password expires soon change it", top_k=20)
    assert [h for h in everything if h["doc_id"] == "kb-0002"] == [
        h for h in everything if h["chunk_id"] == "kb-0002#0"
    ]  # the three old chunks are gone
    info = service.get_collection("kb")
    assert (info.documents, info.chunks) == (9, 25 - 3 + 1)


async def test_deleted_documents_never_come_back(make_service: ServiceFactory, kb_copy: Path) -> None:
    service = await make_service(kb_copy)
    question = "I forgot my password"
    assert (await search(service, question, top_k=1))[0]["doc_id"] == "kb-0001"
    deleted = await service.delete_document("kb", "kb-0001")
    assert deleted.model_dump() == {"id": "kb-0001", "deleted": True, "chunks": 3}
    everything = await search(service, question, top_k=20)
    assert len(everything) == 20 and "kb-0001" not in {hit["doc_id"] for hit in everything}
    passwords = await search(service, question, top_k=20, filter={"category": "passwords"})
    assert {hit["doc_id"] for hit in passwords} == {"kb-0002", "kb-0003"}
    with pytest.raises(APIError) as caught:
        await service.delete_document("kb", "kb-0001")
    assert caught.value.status_code == 404 and "no document 'kb-0001'" in caught.value.message


async def test_restart_gives_identical_results(make_service: ServiceFactory, kb_copy: Path) -> None:
    questions = ["VPN drops when my laptop sleeps", "set up the authenticator app", "print in colour"]
    service = await make_service(kb_copy)
    await service.delete_document("kb", "kb-0050")
    before = [await search(service, q, top_k=6) for q in questions]
    filtered = await search(service, questions[0], top_k=3, filter={"category": "vpn"})
    await service.close()

    again = await make_service(kb_copy)
    assert [await search(again, q, top_k=6) for q in questions] == before
    assert await search(again, questions[0], top_k=3, filter={"category": "vpn"}) == filtered
    await again.close()

    for index_file in (kb_copy / "kb").glob("index-g*.faiss"):
        index_file.unlink()  # the cache is gone: rebuilt from the SQLite file
    rebuilt = await make_service(kb_copy)
    assert [await search(rebuilt, q, top_k=6) for q in questions] == before
    assert list((kb_copy / "kb").glob("index-g*.faiss"))


async def test_searches_complete_while_an_ingest_runs(
    make_service: ServiceFactory, kb_copy: Path, articles: dict[str, DocumentIn]
) -> None:
    """The ingest embeds in batches of 2 on the embedding thread; each search's query goes ahead of the
    remaining batches. Proof from counters: searches finished while the ingest was still running and had
    embedded some but not all of its chunks."""
    service = await make_service(kb_copy, encode_batch_size=2)
    new = [articles[doc_id] for doc_id in ("kb-0013", "kb-0014", "kb-0015", "kb-0016")]
    base = embedded_texts(service)
    ingest = asyncio.create_task(service.upsert("kb", new))
    observed = []
    searches = 0
    while not ingest.done():
        hits = await search(service, "I forgot my password", top_k=3)
        searches += 1
        assert hits[0]["doc_id"] == "kb-0001"
        running = service.metrics.registry.get_sample_value("retriever_ingests_running")
        chunks_embedded = embedded_texts(service) - base - searches  # each search embedded one query
        observed.append((ingest.done(), running, chunks_embedded))
    result = await ingest
    assert result.chunks == 11
    during = [seen for done, running, seen in observed if not done and running == 1 and 0 < seen < result.chunks]
    assert during, observed
    outlook = await search(service, "set up Outlook on my new laptop", top_k=1)
    assert outlook[0]["doc_id"] == "kb-0013"
    assert service.metrics.registry.get_sample_value("retriever_ingests_running") == 0
