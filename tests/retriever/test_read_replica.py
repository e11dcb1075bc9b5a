"""Read replicas: two real retriever processes (``python -m retriever``) on one data folder, a writer and a reader
(RETRIEVER_READ_ONLY=true), the real embedder, FAISS and SQLite. What is ingested through the writer is found
through the reader; the writer's updates, deletes and a deleted collection reach the reader; the reader refuses
every write with a 405 envelope and changes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from retriever.schemas import DocumentIn
from tests.services import Service, free_port, start_service

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, Service]]:
    logs = tmp_path_factory.mktemp("retriever-pair")
    data = logs / "data"
    common = {"RETRIEVER_DATA_DIR": str(data), "RETRIEVER_TORCH_THREADS": "1"}
    port = free_port()
    writer = start_service(
        "retriever",
        ["-m", "retriever"],
        {**common, "RETRIEVER_PORT": str(port), "RETRIEVER_INDEX_FLUSH_INTERVAL_S": "0.5"},
        port,
        logs,
        timeout_s=300,
    )
    try:
        port = free_port()
        reader = start_service(
            "retriever-read",
            ["-m", "retriever"],
            {
                **common,
                "RETRIEVER_PORT": str(port),
                "RETRIEVER_READ_ONLY": "true",
                "RETRIEVER_RELOAD_INTERVAL_S": "0.2",
            },
            port,
            logs,
            timeout_s=300,
        )
    except BaseException:
        writer.stop()
        raise
    yield writer, reader
    reader.stop()
    writer.stop()


def _eventually(check: Callable[[], Any], what: str, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"the reader never showed {what}")
        time.sleep(0.1)


def _search(service: Service, question: str, top_k: int = 3) -> list[str]:
    answer = httpx.post(f"{service.url}/v1/collections/kb/search", json={"query": question, "top_k": top_k}, timeout=30)
    assert answer.status_code == 200, answer.text
    return [hit["doc_id"] for hit in answer.json()["data"]]


def _documents(service: Service) -> int | None:
    answer = httpx.get(f"{service.url}/v1/collections/kb")
    return answer.json()["documents"] if answer.status_code == 200 else None


def _body(docs: list[DocumentIn]) -> dict[str, Any]:
    return {"documents": [d.model_dump(exclude_none=True) for d in docs]}


PASSWORD = "I forgot my password and cannot sign in, can I reset it myself?"


def test_what_the_writer_ingests_the_reader_finds(pair: tuple[Service, Service], kb_docs: list[DocumentIn]) -> None:
    writer, reader = pair
    assert httpx.get(f"{reader.url}/ready").json()["role"] == "reader"
    assert httpx.put(f"{writer.url}/v1/collections/kb").status_code == 201
    upserted = httpx.post(f"{writer.url}/v1/collections/kb/documents", json=_body(kb_docs), timeout=300)
    assert upserted.status_code == 200, upserted.text
    _eventually(lambda: _documents(reader) == len(kb_docs), f"{len(kb_docs)} documents")
    assert "kb-0001" in _search(reader, PASSWORD)
    assert _search(reader, PASSWORD, 5) == _search(writer, PASSWORD, 5)

    # A delete and an update on the writer reach the reader.
    assert httpx.delete(f"{writer.url}/v1/collections/kb/documents/kb-0001").status_code == 200
    _eventually(lambda: "kb-0001" not in _search(reader, PASSWORD, 8), "kb-0001 deleted")
    renamed = kb_docs[1].model_copy(update={"metadata": {**kb_docs[1].metadata, "category": "moved"}})
    assert httpx.post(f"{writer.url}/v1/collections/kb/documents", json=_body([renamed]), timeout=60).is_success

    def moved() -> bool:
        answer = httpx.post(
            f"{reader.url}/v1/collections/kb/search",
            json={"query": PASSWORD, "top_k": 3, "filter": {"category": "moved"}},
        ).json()
        return [hit["doc_id"] for hit in answer["data"]] == [kb_docs[1].id] * len(answer["data"]) != []

    _eventually(moved, "the updated metadata")


def test_the_reader_refuses_writes_and_changes_nothing(
    pair: tuple[Service, Service], kb_docs: list[DocumentIn], tmp_path: Path
) -> None:
    writer, reader = pair
    if _documents(writer) is None:
        httpx.put(f"{writer.url}/v1/collections/kb").raise_for_status()
    before = _documents(writer)
    _eventually(lambda: _documents(reader) == before, "the writer's collection")
    seed = tmp_path / "x.bin"
    seed.write_bytes(b"x")
    refused = [
        httpx.put(f"{reader.url}/v1/collections/other"),
        httpx.put(f"{reader.url}/v1/collections/kb"),
        httpx.delete(f"{reader.url}/v1/collections/kb"),
        httpx.post(f"{reader.url}/v1/collections/kb/documents", json=_body(kb_docs[:1])),
        httpx.delete(f"{reader.url}/v1/collections/kb/documents/kb-0002"),
        httpx.post(
            f"{reader.url}/v1/collections/kb/import",
            files={name: (name, seed.read_bytes()) for name in ("index", "metadata", "config")},
        ),
    ]
    for answer in refused:
        assert answer.status_code == 405, answer.text
        error = answer.json()["error"]
        assert error["code"] == "read_only_replica" and "writer" in error["message"]
        assert set(error) == {"message", "type", "param", "code"}
    assert [a.headers["allow"] for a in refused] == ["GET", "GET", "GET", "", "", ""]
    time.sleep(0.5)  # longer than the reader's reload interval
    assert _documents(writer) == _documents(reader) == before
    assert httpx.get(f"{writer.url}/v1/collections/other").status_code == 404


def test_a_collection_the_writer_deletes_leaves_the_reader(pair: tuple[Service, Service]) -> None:
    writer, reader = pair
    assert httpx.put(f"{writer.url}/v1/collections/brief").status_code == 201
    _eventually(lambda: httpx.get(f"{reader.url}/v1/collections/brief").status_code == 200, "the new collection")
    assert httpx.delete(f"{writer.url}/v1/collections/brief").status_code == 200
    _eventually(lambda: httpx.get(f"{reader.url}/v1/collections/brief").status_code == 404, "the deletion")
    assert "brief" not in httpx.get(f"{reader.url}/ready").json()["collections"]
