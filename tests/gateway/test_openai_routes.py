"""The OpenAI routes beside chat: ``GET /v1/models/{id}`` from the gateway's registry, and
``POST /v1/embeddings`` relayed to the retriever (a scripted one here, which records what it was sent;
tests/integration/test_routes.py drives the real retriever with the SDK)."""

from __future__ import annotations

import orjson

from tests.gateway.fakes import Replica, Reply, dead_url, gateway, models, running

VECTORS = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.5]}], "model": "e1"}


def _gguf() -> Replica:
    return Replica().on("/v1/models", lambda r: models("m1", "org/m-2"))


async def test_a_model_is_retrieved_by_id_and_an_unknown_one_is_404_listing_the_others() -> None:
    gguf = _gguf()
    async with running(gguf), gateway({"inference-gguf": [gguf.url]}) as client:
        plain = await client.get("/v1/models/m1")
        slashed = await client.get("/v1/models/org/m-2")
        unknown = await client.get("/v1/models/gpt-17")
    assert plain.status_code == 200
    assert plain.json() == {"id": "m1", "object": "model", "created": 0, "owned_by": "inference-gguf"}
    assert slashed.json()["id"] == "org/m-2"
    assert unknown.status_code == 404
    error = unknown.json()["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "m1" in error["message"] and "org/m-2" in error["message"]


async def test_embeddings_go_to_the_retriever_with_the_request_id() -> None:
    gguf = _gguf()
    retriever = Replica().on("/v1/embeddings", lambda r: Reply(payload=VECTORS))
    body = {"model": "e1", "input": ["vpn"], "encoding_format": "float"}
    async with running(gguf, retriever), gateway({"inference-gguf": [gguf.url]}, retriever_url=retriever.url) as client:
        response = await client.post("/v1/embeddings", json=body, headers={"X-Request-ID": "emb-1"})
    assert response.status_code == 200
    assert response.json() == VECTORS
    [seen] = retriever.seen
    assert orjson.loads(seen.body) == body
    assert seen.headers["X-Request-ID"] == "emb-1"


async def test_embeddings_errors_keep_the_retrievers_words_or_name_what_is_missing() -> None:
    gguf = _gguf()
    refusal = {"error": {"message": "The model 'x' does not exist.", "type": "invalid_request_error",
                         "param": "model", "code": "model_not_found"}}  # fmt: skip
    retriever = Replica().on("/v1/embeddings", lambda r: Reply(status=404, payload=refusal))
    async with running(gguf, retriever), gateway({"inference-gguf": [gguf.url]}, retriever_url=retriever.url) as client:
        refused = await client.post("/v1/embeddings", json={"model": "x", "input": "a"})
        not_json = await client.post("/v1/embeddings", content=b"[1, 2]")
    async with running(gguf), gateway({"inference-gguf": [gguf.url]}, retriever_url=dead_url()) as client:
        down = await client.post("/v1/embeddings", json={"input": "a"})
    async with running(gguf), gateway({"inference-gguf": [gguf.url]}, retriever_url="") as client:
        off = await client.post("/v1/embeddings", json={"input": "a"})
    assert refused.status_code == 404
    assert refused.json()["error"] | {"type": None} == refusal["error"] | {"type": None}
    assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
    assert down.status_code == 503 and down.headers["retry-after"] == "2"
    assert down.json()["error"]["code"] == "retriever_unavailable"
    assert off.status_code == 400 and off.json()["error"]["code"] == "embeddings_disabled"
    assert len(retriever.seen) == 1  # only the valid request reached it
