"""The HTTP API through the app's own lifespan (httpx.ASGITransport), with the real embedder and real FAISS."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from retriever.app import create_app
from retriever.config import Settings
from retriever.embedder import Embedder
from tests.retriever.conftest import Client, error
from tests.retriever.test_seed_import import RECORDS, SEED_CONFIG, seed_files

DOCS = [
    {
        "id": "vpn-1",
        "title": "VPN on hotel Wi-Fi",
        "text": "Open the hotel's sign-in page first, then start the VPN.",
        "metadata": {"category": "vpn", "tags": ["travel", "wifi"]},
    },
    {
        "id": "print-1",
        "title": "Paper jam",
        "text": "Open tray 2 and pull the jammed sheet out gently.",
        "source": "https://kb.example/print-1",
        "metadata": {"category": "printers"},
    },
    {
        "id": "mail-1",
        "title": "Mailbox full",
        "text": "Archive old mail or empty the Deleted Items folder.",
        "metadata": {"category": "email", "tags": ["quota"]},
    },
]


async def test_collection_lifecycle(client: Client) -> None:
    async with client() as http:
        created = await http.put("/v1/collections/notes", json={"chunk_size": 400, "chunk_overlap": 40})
        assert created.status_code == 201
        assert created.json() == {
            "name": "notes",
            "embedder": "all-minilm-l6-v2",
            "dimension": 384,
            "documents": 0,
            "chunks": 0,
            "index": "flat",
            "index_mode": "auto",
            "chunk_size": 400,
            "chunk_overlap": 40,
        }
        same = await http.put("/v1/collections/notes", json={"chunk_size": 400})
        assert same.status_code == 200 and same.json() == created.json()
        assert (await http.put("/v1/collections/notes")).status_code == 200  # no body: any settings will do
        conflict = await http.put("/v1/collections/notes", json={"chunk_size": 500})
        assert conflict.status_code == 409
        assert error(conflict)["message"] == (
            "The collection 'notes' already exists with chunk_size 400 (asked 500). "
            "Delete it first to change its settings, or leave those fields out."
        )

        upserted = await http.post("/v1/collections/notes/documents", json={"documents": DOCS})
        assert upserted.status_code == 200 and upserted.json() == {"upserted": 3, "unchanged": 0, "chunks": 3}
        listed = (await http.get("/v1/collections")).json()
        assert listed["object"] == "list" and [(c["name"], c["documents"], c["chunks"]) for c in listed["data"]] == [
            ("notes", 3, 3)
        ]

        found = await http.post("/v1/collections/notes/search", json={"query": "printer jammed"})
        body = found.json()
        assert body["object"] == "list" and body["collection"] == "notes" and len(body["data"]) == 3
        assert body["data"][0] == {
            "doc_id": "print-1",
            "chunk_id": "print-1#0",
            "text": DOCS[1]["text"],
            "title": "Paper jam",
            "source": "https://kb.example/print-1",
            "score": body["data"][0]["score"],
            "metadata": {"category": "printers"},
        }
        travel = await http.post(
            "/v1/collections/notes/search", json={"query": "printer jammed", "top_k": 2, "filter": {"tags": "travel"}}
        )
        assert [hit["doc_id"] for hit in travel.json()["data"]] == ["vpn-1"]

        deleted = await http.delete("/v1/collections/notes/documents/print-1")
        assert deleted.json() == {"id": "print-1", "deleted": True, "chunks": 1}
        again = await http.delete("/v1/collections/notes/documents/print-1")
        assert again.status_code == 404 and error(again)["code"] == "document_not_found"
        after = await http.post("/v1/collections/notes/search", json={"query": "printer jammed", "top_k": 20})
        assert sorted(hit["doc_id"] for hit in after.json()["data"]) == ["mail-1", "vpn-1"]

        gone = await http.delete("/v1/collections/notes")
        assert gone.json() == {"name": "notes", "deleted": True}
        missing = await http.get("/v1/collections/notes")
        assert missing.status_code == 404
        assert error(missing)["message"] == "The collection 'notes' does not exist. There are no collections yet."


async def test_hnsw_collection_over_http(client: Client) -> None:
    async with client() as http:
        assert (await http.put("/v1/collections/graph", json={"index": "hnsw"})).json()["index"] == "hnsw"
        await http.post("/v1/collections/graph/documents", json={"documents": DOCS})
        await http.delete("/v1/collections/graph/documents/mail-1")
        hits = (await http.post("/v1/collections/graph/search", json={"query": "mailbox is full", "top_k": 5})).json()
        assert {hit["doc_id"] for hit in hits["data"]} == {"vpn-1", "print-1"}  # the tombstone never shows
        only = await http.post(
            "/v1/collections/graph/search",
            json={"query": "mailbox is full", "top_k": 1, "filter": {"category": "printers"}},
        )
        assert [hit["doc_id"] for hit in only.json()["data"]] == ["print-1"]


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"query": "hi", "top_k": 0}, "top_k", "Input should be greater than or equal to 1"),
        ({"query": "hi", "top_k": 21}, "top_k", "Input should be less than or equal to 20"),
        ({"query": ""}, "query", "String should have at least 1 character"),
        ({"query": "   "}, "query", "must not be blank"),
        ({"query": "hi", "filter": {"tags": ["a"]}}, "filter", "a list is ambiguous"),
        ({"query": "hi", "score_threshold": 2}, "score_threshold", "less than or equal to 1"),
        ({"query": "hi", "k": 3}, "k", "Extra inputs are not permitted"),
    ],
)
async def test_bad_searches_are_400_in_the_envelope(
    client: Client, kb_copy: Path, body: dict[str, Any], param: str, message: str
) -> None:
    async with client(data_dir=kb_copy) as http:
        response = await http.post("/v1/collections/kb/search", json=body)
        assert response.status_code == 400
        problem = error(response)
        assert problem["type"] == "invalid_request_error" and problem["param"] == param
        assert message in problem["message"]


async def test_unknown_collections_and_bad_input_change_nothing(client: Client, kb_copy: Path) -> None:
    async with client(data_dir=kb_copy) as http:
        unknown = await http.post("/v1/collections/nope/search", json={"query": "hi"})
        assert unknown.status_code == 404 and error(unknown)["type"] == "not_found_error"
        assert error(unknown)["message"] == "The collection 'nope' does not exist. Existing collections: kb."
        upsert = await http.post("/v1/collections/nope/documents", json={"documents": DOCS})
        assert upsert.status_code == 404
        assert "Create it first with PUT /v1/collections/nope" in error(upsert)["message"]
        assert "`python -m retriever ingest nope PATH` (which creates it)" in error(upsert)["message"]

        bad_batch = [DOCS[0], {"id": "x", "text": ""}]
        refused = await http.post("/v1/collections/kb/documents", json={"documents": bad_batch})
        assert refused.status_code == 400 and error(refused)["param"] == "documents.1.text"
        twice = await http.post("/v1/collections/kb/documents", json={"documents": [DOCS[0], DOCS[0]]})
        assert twice.status_code == 400 and "appears more than once" in error(twice)["message"]
        not_json = await http.post(
            "/v1/collections/kb/documents", content=b"{nope", headers={"content-type": "application/json"}
        )
        assert not_json.status_code == 400
        bad_name = await http.put("/v1/collections/bad name!")
        assert bad_name.status_code == 400 and error(bad_name)["param"] == "name"
        bad_embedder = await http.put("/v1/collections/x", json={"embedder": "nope"})
        assert bad_embedder.status_code == 400 and "Known embedders: all-minilm-l6-v2" in error(bad_embedder)["message"]
        bad_overlap = await http.put("/v1/collections/x", json={"chunk_size": 200, "chunk_overlap": 150})
        assert bad_overlap.status_code == 400 and error(bad_overlap)["param"] == "chunk_overlap"
        info = (await http.get("/v1/collections")).json()["data"]
        assert [(c["name"], c["documents"], c["chunks"]) for c in info] == [("kb", 9, 25)]


async def test_embeddings_with_the_openai_sdk(client: Client, embedder: Embedder) -> None:
    async with client() as http:
        transport = http._transport
        sdk = openai.AsyncOpenAI(
            base_url="http://retriever/v1",
            api_key="unused",
            max_retries=0,
            http_client=httpx.AsyncClient(transport=transport, base_url="http://retriever"),
        )
        texts = ["hello world", "How do I reset my NWL password?"]
        result = await sdk.embeddings.create(model="all-minilm-l6-v2", input=texts)  # the SDK asks for base64
        assert [item.index for item in result.data] == [0, 1] and result.model == "all-minilm-l6-v2"
        tokens = [len(ids) for ids in embedder._model.tokenizer(texts)["input_ids"]]
        assert result.usage.prompt_tokens == result.usage.total_tokens == sum(tokens) and tokens[0] == 4
        vectors = np.array([item.embedding for item in result.data], dtype=np.float32)
        assert vectors.shape == (2, 384)
        assert np.allclose(vectors, embedder.encode(texts), atol=1e-5)

        floats = await sdk.embeddings.create(model="all-minilm-l6-v2", input="hello world", encoding_format="float")
        assert np.allclose(floats.data[0].embedding, vectors[0], atol=1e-6)
        raw = (
            await http.post(
                "/v1/embeddings",
                json={"input": "hello world", "encoding_format": "base64", "user": "u1", "some_new_field": True},
            )
        ).json()
        decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
        assert raw["object"] == "list" and raw["data"][0]["object"] == "embedding"
        # The same single input, sent as base64 and as floats: the same float32 values, bit for bit. (Against the
        # batch of two above only close: padding to the longer text changes the last bits.)
        assert np.array_equal(decoded, np.asarray(floats.data[0].embedding, dtype=np.float32))
        default_model = (await http.post("/v1/embeddings", json={"input": ["hi"]})).json()
        assert default_model["model"] == "all-minilm-l6-v2"

        with pytest.raises(openai.NotFoundError) as missing:
            await sdk.embeddings.create(model="text-embedding-3-small", input="hi")
        assert "Available models: all-minilm-l6-v2" in str(missing.value)
        tokens_in = await http.post("/v1/embeddings", json={"input": [[1, 2, 3]]})
        assert tokens_in.status_code == 400 and "token arrays are not supported" in error(tokens_in)["message"]
        empty = await http.post("/v1/embeddings", json={"input": ""})
        assert empty.status_code == 400 and error(empty)["param"] == "input"
        await sdk.close()


async def test_seed_import_over_multipart(client: Client, embedder: Embedder, tmp_path: Path) -> None:
    index, metadata, config = seed_files(tmp_path / "seed", embedder, SEED_CONFIG)
    files = {
        "index": (index.name, index.read_bytes()),
        "metadata": (metadata.name, metadata.read_bytes()),
        "config": (config.name, config.read_bytes()),
    }
    async with client() as http:
        missing = await http.post("/v1/collections/seed/import", files=files)
        assert missing.status_code == 404
        await http.put("/v1/collections/seed")
        imported = await http.post("/v1/collections/seed/import", files=files)
        assert imported.status_code == 200, imported.text
        assert imported.json() == {
            "collection": "seed",
            "documents": 4,
            "upserted": 4,
            "unchanged": 0,
            "chunks": 4,
            "vectors": "reused",
            "note": imported.json()["note"],
        }
        hit = (await http.post("/v1/collections/seed/search", json={"query": "full mailbox", "top_k": 1})).json()
        assert hit["data"][0]["title"] == RECORDS[2]["question"]

        poisoned = {**files, "metadata": ("evil.pkl", b"cos\nsystem\n(S'echo pwned'\ntR.")}
        refused = await http.post("/v1/collections/seed/import", files=poisoned)
        assert refused.status_code == 400
        assert error(refused)["message"].startswith("refusing to load 'os.system' from evil.pkl")
        not_json = {**files, "config": ("c.json", b"{oops")}
        assert (await http.post("/v1/collections/seed/import", files=not_json)).status_code == 400
        no_file = await http.post("/v1/collections/seed/import", files={"index": files["index"]})
        assert no_file.status_code == 400 and error(no_file)["param"] == "metadata"


async def test_health_ready_and_metrics(client: Client, kb_copy: Path, embedder: Embedder) -> None:
    app = create_app(Settings(data_dir=kb_copy), embedders={embedder.id: embedder})
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://retriever") as unstarted:
        assert (await unstarted.get("/health")).json() == {"status": "ok"}
        loading = await unstarted.get("/ready")  # the lifespan has not loaded anything
        assert loading.status_code == 503 and error(loading)["code"] == "loading"
        assert loading.headers["retry-after"] == "2"
        early = await unstarted.post("/v1/collections/kb/search", json={"query": "hi"})
        assert early.status_code == 503

    async with client(data_dir=kb_copy) as http:
        ready = await http.get("/ready")
        assert ready.json() == {
            "status": "ready",
            "role": "writer",
            "embedders": ["all-minilm-l6-v2"],
            "collections": ["kb"],
        }
        await http.post("/v1/collections/kb/search", json={"query": "VPN drops"})
        await http.post("/v1/collections/kb/search", json={"query": "printer"})
        metrics = (await http.get("/metrics")).text
        assert 'retriever_searches_total{collection="kb"} 2.0' in metrics
        assert 'retriever_search_seconds_count{collection="kb"} 2.0' in metrics
        assert 'retriever_collection_chunks{collection="kb"} 25.0' in metrics
        assert 'retriever_collection_documents{collection="kb"} 9.0' in metrics
        assert "retriever_ready 1.0" in metrics
        assert (await http.get("/v1/models")).json()["data"][0]["id"] == "all-minilm-l6-v2"


async def test_a_broken_collection_keeps_ready_at_503(client: Client, tmp_path: Path) -> None:
    broken = tmp_path / "data" / "broken"
    broken.mkdir(parents=True)
    (broken / "collection.sqlite3").write_bytes(b"this is not sqlite" * 100)
    async with client() as http:
        ready = await http.get("/ready")
        assert ready.status_code == 503 and error(ready)["code"] == "load_failed"
        assert "collection 'broken'" in error(ready)["message"]
        assert (await http.get("/health")).status_code == 200

    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    async with client(data_dir=not_a_folder) as http:
        ready = await http.get("/ready")
        assert ready.status_code == 503 and error(ready)["code"] == "load_failed"
        assert "FileExistsError" in error(ready)["message"]
        search = await http.post("/v1/collections/kb/search", json={"query": "hi"})
        assert search.status_code == 503 and error(search)["message"].startswith("The retriever failed to start")


def test_settings_fail_clearly(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from chat_common.settings import settings_or_exit

    monkeypatch.setenv("RETRIEVER_CHUNK_SIZE", "200")
    monkeypatch.setenv("RETRIEVER_CHUNK_OVERLAP", "150")
    monkeypatch.setenv("RETRIEVER_EMBEDDERS", json.dumps({"bad id!": "/x"}))
    with pytest.raises(SystemExit):
        settings_or_exit(Settings)
    printed = capsys.readouterr().err
    assert "RETRIEVER_CHUNK_OVERLAP: Value error, must be at most half of RETRIEVER_CHUNK_SIZE (200)" in printed
    assert "RETRIEVER_EMBEDDERS" in printed
