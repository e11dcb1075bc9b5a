"""Retrieval-augmented chat through the gateway: the real retriever (subprocess, real embedder and FAISS)
holding part of the IT-support knowledge base, and a scripted model replica that records the prompt it
was sent. Covers the ``retrieval`` extension (stream and non-stream), sources, the context budget, a
retriever that is down, and the IT-support chatbot's own route (seed 002) with credential masking."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.gateway.fakes import Replica, ask, dead_url, gateway, model_replica, running, sse
from tests.services import ROOT, Service, free_port, start_service

ARTICLES = ["kb-0001", "kb-0002", "kb-0003", "kb-0007", "kb-0008", "kb-0020", "kb-0026", "kb-0063"]


@pytest.fixture(scope="module")
def retriever(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    data = tmp_path_factory.mktemp("retriever")
    port = free_port()
    service = start_service(
        "retriever", ["-m", "retriever"], {"RETRIEVER_PORT": str(port), "RETRIEVER_DATA_DIR": str(data)}, port, data
    )
    articles = [orjson.loads(line) for line in (ROOT / "data/it-support/articles.jsonl").read_bytes().splitlines()]
    documents = [a for a in articles if a["id"] in ARTICLES]
    httpx.put(f"{service.url}/v1/collections/kb", json={}).raise_for_status()
    httpx.post(
        f"{service.url}/v1/collections/kb/documents", json={"documents": documents}, timeout=120
    ).raise_for_status()
    yield service
    service.stop()


def _sent(replica: Replica, i: int = 0) -> dict[str, Any]:
    return orjson.loads(replica.chat_requests()[i].body)  # type: ignore[no-any-return]


CITED = "Use the portal [1]."
PASSWORD = "I forgot my password, how do I reset it on my own?"


async def test_retrieval_puts_numbered_passages_in_the_prompt_and_returns_sources(retriever: Service) -> None:
    replica = model_replica(answer=CITED)
    async with running(replica), gateway({"inference-gguf": [replica.url]}, retriever_url=retriever.url) as client:
        response = await client.post(
            "/v1/chat/completions", content=ask(PASSWORD, retrieval={"collection": "kb", "top_k": 3})
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["choices"][0]["message"]["content"] == "Use the portal [1]."
    sources = body["sources"]
    assert [s["index"] for s in sources] == [1, 2, 3]
    assert sources[0]["doc_id"] == "kb-0001"
    assert {"doc_id", "chunk_id", "title", "source", "score", "metadata", "text"} <= set(sources[0])
    assert sources[0]["score"] >= sources[1]["score"] >= sources[2]["score"]
    sent = _sent(replica)
    assert "retrieval" not in sent  # an extension: not forwarded
    system, user = sent["messages"]
    assert user == {"role": "user", "content": PASSWORD}
    assert system["role"] == "system" and "numbered passages" in system["content"]
    assert f"[1] {sources[0]['title']}\n" in system["content"] and "\n\n[3] " in system["content"]


async def test_a_streamed_answer_ends_with_a_sources_event_before_done(retriever: Service) -> None:
    events = [
        b'data: {"id":"c1","object":"chat.completion.chunk","created":7,"model":"m1","choices":[{"index":0,'
        b'"delta":{"content":"Connect"},"finish_reason":null}]}\n\n',
        b'data: {"id":"c1","object":"chat.completion.chunk","created":7,"model":"m1","choices":[{"index":0,'
        b'"delta":{},"finish_reason":"stop"}]}\n\n',
        b"data: [DONE]\n\n",
    ]
    replica = model_replica(answer=CITED).on("/v1/chat/completions", lambda r: sse(events))
    async with running(replica), gateway({"inference-gguf": [replica.url]}, retriever_url=retriever.url) as client:
        response = await client.post(
            "/v1/chat/completions",
            content=ask("The VPN client shows an error and won't connect", stream=True, retrieval="kb"),
        )
    assert response.status_code == 200
    payloads = [line[6:] for line in response.text.split("\n") if line.startswith("data: ")]
    assert payloads[-1] == "[DONE]"
    last = orjson.loads(payloads[-2])
    assert last["id"] == "c1" and last["created"] == 7 and last["object"] == "chat.completion.chunk"
    assert last["choices"] == []
    assert len(last["sources"]) == 4 and last["sources"][0]["doc_id"] in ("kb-0007", "kb-0008")
    assert orjson.loads(payloads[0])["choices"][0]["delta"]["content"] == "Connect"


async def test_passages_are_limited_to_the_models_context(retriever: Service) -> None:
    replica = model_replica(context_length=700, answer=CITED)
    async with running(replica), gateway({"inference-gguf": [replica.url]}, retriever_url=retriever.url) as client:
        response = await client.post(
            "/v1/chat/completions", content=ask(PASSWORD, max_tokens=100, retrieval={"collection": "kb", "top_k": 8})
        )
    assert response.status_code == 200
    sources = response.json()["sources"]
    assert 1 <= len(sources) < 8
    system = _sent(replica)["messages"][0]["content"]
    assert len(system.encode()) // 3 + 100 < 700  # the cautious estimate of the prompt still fits
    assert f"[{len(sources)}] " in system and f"[{len(sources) + 1}] " not in system


async def test_a_filter_and_a_threshold_reach_the_retriever(retriever: Service) -> None:
    replica = model_replica(answer=CITED)
    async with running(replica), gateway({"inference-gguf": [replica.url]}, retriever_url=retriever.url) as client:
        response = await client.post(
            "/v1/chat/completions",
            content=ask(PASSWORD, retrieval={"collection": "kb", "top_k": 2, "filter": {"category": "printers"}}),
        )
        strict = await client.post(
            "/v1/chat/completions", content=ask(PASSWORD, retrieval={"collection": "kb", "score_threshold": 0.99})
        )
    assert response.status_code == 200
    assert {s["doc_id"] for s in response.json()["sources"]} == {"kb-0020"}  # the one printers article
    assert strict.json()["sources"] == []
    assert "(No passage was found for this question.)" in _sent(replica, 1)["messages"][0]["content"]


async def test_an_unknown_collection_is_404_and_no_model_is_asked(retriever: Service) -> None:
    replica = model_replica(answer=CITED)
    async with running(replica), gateway({"inference-gguf": [replica.url]}, retriever_url=retriever.url) as client:
        response = await client.post("/v1/chat/completions", content=ask(PASSWORD, retrieval="nope"))
        bad = await client.post(
            "/v1/chat/completions", content=ask(PASSWORD, retrieval={"collection": "kb", "top_k": 50})
        )
    assert response.status_code == 404
    assert "nope" in response.json()["error"]["message"] and "kb" in response.json()["error"]["message"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "retrieval.top_k"
    assert replica.chat_requests() == []


async def test_retriever_down_is_503_unless_the_request_accepts_an_answer_without_passages() -> None:
    replica = model_replica(answer=CITED)
    async with running(replica), gateway({"inference-gguf": [replica.url]}, retriever_url=dead_url()) as client:
        failed = await client.post("/v1/chat/completions", content=ask(PASSWORD, retrieval="kb"))
        degraded = await client.post(
            "/v1/chat/completions", content=ask(PASSWORD, retrieval={"collection": "kb", "on_error": "answer"})
        )
        metrics = (await client.get("/metrics")).text
    assert failed.status_code == 503
    assert failed.json()["error"]["code"] == "retriever_unavailable"
    assert "on_error" in failed.json()["error"]["message"]
    assert len(replica.chat_requests()) == 1  # only the degraded request reached the model
    assert degraded.status_code == 200
    assert degraded.headers["x-switchboard-retrieval"] == "unavailable"
    assert degraded.json()["sources"] == []
    assert "gateway_retrieval_failures_total 2.0" in metrics


async def test_retrieval_off_refuses_the_field() -> None:
    replica = model_replica(answer=CITED)
    async with running(replica), gateway({"inference-gguf": [replica.url]}, retriever_url="") as client:
        response = await client.post("/v1/chat/completions", content=ask(PASSWORD, retrieval="kb"))
    assert response.status_code == 400 and response.json()["error"]["code"] == "retrieval_disabled"


# --- the IT-support chatbot's route (seed 002) ------------------------------------------------------------


def _support(retriever_url: str, replica: Replica, **settings: object):
    return gateway(
        {"inference-gguf": [replica.url]},
        retriever_url=retriever_url,
        **{"rag_model": "m1", "rag_collection": "kb", **settings},
    )


async def test_the_support_route_answers_with_its_search_results(retriever: Service) -> None:
    replica = model_replica(answer="Open the Self-Service Portal and choose Reset.")
    async with running(replica), _support(retriever.url, replica) as client:
        response = await client.post(
            "/api/v1/chat/", json={"query": "How do I reset my password?", "top_k": 3, "max_tokens": 120}
        )
        health = await client.get("/api/v1/chat/health")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"response", "query", "context_used", "search_results", "processing_time", "timestamp"}
    assert body["response"] == "Open the Self-Service Portal and choose Reset."
    assert body["query"] == "How do I reset my password?"
    assert len(body["search_results"]) == 3
    first = body["search_results"][0]
    assert first["subject"].startswith("Forgotten password") and first["metadata"]["category"] == "passwords"
    assert first["answer"] in body["context_used"] and body["context_used"].startswith("[1] ")
    assert body["timestamp"].endswith("Z") and body["processing_time"] >= 0
    sent = _sent(replica)
    assert sent["max_tokens"] == 120 and sent["model"] == "m1"
    assert health.status_code == 200
    assert health.json()["status"] == "healthy" and health.json()["documents"] == len(ARTICLES)


async def test_the_support_route_masks_credentials_everywhere(retriever: Service) -> None:
    leaked = "Your old one was hunter2. Try password: Tr0ub4dor&3 now."
    replica = model_replica(answer=leaked)
    async with running(replica), _support(retriever.url, replica) as client:
        response = await client.post(
            "/api/v1/chat/",
            json={
                "query": "my password is Winter2024! and it stopped working, token ghp_0123456789abcdefghijABCDEFGHIJ"
            },
        )
    body = response.json()
    assert response.status_code == 200
    assert "Winter2024" not in body["query"] and "ghp_0123" not in body["query"]
    assert body["query"].startswith("my password is [REDACTED]")
    assert "Tr0ub4dor&3" not in body["response"] and "password: [REDACTED]" in body["response"]
    sent = replica.chat_requests()[0].body.decode()
    assert "Winter2024" not in sent and "ghp_0123" not in sent  # the model never saw them either


@pytest.mark.parametrize(
    ("payload", "detail"),
    [
        ({"query": ""}, "Query must be between 1 and 2000 characters"),
        ({"query": "   "}, "Query must be between 1 and 2000 characters"),
        ({"query": "x" * 2001}, "Query must be between 1 and 2000 characters"),
        ({"query": "vpn", "top_k": 0}, "top_k must be an integer between 1 and 20"),
        ({"query": "vpn", "top_k": 21}, "top_k must be an integer between 1 and 20"),
        ({"query": "vpn", "max_tokens": 49}, "max_tokens must be an integer between 50 and 500"),
        ({"query": "vpn", "max_tokens": 501}, "max_tokens must be an integer between 50 and 500"),
        ({"top_k": 3}, "Query must be between 1 and 2000 characters"),
    ],
)
async def test_the_support_route_validates_in_its_own_error_shape(
    retriever: Service, payload: dict[str, Any], detail: str
) -> None:
    replica = model_replica(answer=CITED)
    async with running(replica), _support(retriever.url, replica) as client:
        response = await client.post("/api/v1/chat/", json=payload)
    assert response.status_code == 400
    body = response.json()
    assert set(body) == {"error", "detail", "timestamp"}
    assert body["error"] == "Validation Error" and body["detail"] == detail
    assert replica.chat_requests() == []


async def test_the_support_route_is_503_when_the_knowledge_base_or_model_is_missing(retriever: Service) -> None:
    replica = model_replica(answer=CITED)
    async with running(replica), _support(dead_url(), replica) as client:
        down = await client.post("/api/v1/chat/", json={"query": "vpn"})
        health = await client.get("/api/v1/chat/health")
    async with running(replica), _support(retriever.url, replica, rag_collection="missing") as client:
        missing = await client.post("/api/v1/chat/", json={"query": "vpn"})
    async with running(replica), _support(retriever.url, replica, rag_model="absent") as client:
        no_model = await client.post("/api/v1/chat/", json={"query": "vpn"})
    for response in (down, missing, no_model):
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "Service Unavailable"
    assert "python -m retriever ingest missing" in missing.json()["detail"]
    assert "absent" in no_model.json()["detail"]
    assert health.status_code == 503 and health.json()["status"] == "unhealthy"
    assert replica.chat_requests() == []
