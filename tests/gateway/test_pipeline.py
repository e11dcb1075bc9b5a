"""The chat pipeline's seams: every call a chat request makes (model, history, retriever) carries its
``X-Request-ID``, and the answer filters (``app.state.answer_filters``) see every answer before the
client, the session store and the seeds' re-framing do. Scripted replicas stand in for all three
services (real HTTP servers that record what they were sent)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

from chat_common.protocol import ChatCompletionRequest
from gateway.app import Gateway
from gateway.config import Settings
from tests.gateway.fakes import Replica, Reply, ask, chunk, completion, models, running, sse

SESSION_PATH = "/v1/sessions/s1/messages"
SEARCH_PATH = "/v1/collections/kb/search"
HIT = {"doc_id": "d1", "chunk_id": "d1:0", "title": "VPN", "text": "Restart the VPN client.", "score": 0.9}


def _history() -> Replica:
    return Replica().on(
        SESSION_PATH, lambda seen: Reply(payload={"messages": []} if seen.method == "GET" else {"stored": 2})
    )


def _retriever() -> Replica:
    return Replica().on(SEARCH_PATH, lambda seen: Reply(payload={"object": "list", "data": [HIT]}))


STREAM = [chunk("hello "), chunk("world", "stop"), b"data: [DONE]\n\n"]


class Shouting:
    """A test filter: upper-cases the answer's text, streamed or whole; records which requests it saw."""

    def __init__(self) -> None:
        self.models: list[str] = []

    async def stream(self, chat: ChatCompletionRequest, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        self.models.append(chat.model)
        async for piece in pieces:
            events = []
            for event in piece.split(b"\n\n")[:-1]:
                if event.startswith(b"data: {"):
                    payload = orjson.loads(event[6:])
                    for choice in payload.get("choices") or ():
                        if (choice.get("delta") or {}).get("content"):
                            choice["delta"]["content"] = choice["delta"]["content"].upper()
                    event = b"data: " + orjson.dumps(payload)
                events.append(event + b"\n\n")
            yield b"".join(events)

    def completion(self, chat: ChatCompletionRequest, payload: dict[str, Any]) -> dict[str, Any]:
        self.models.append(chat.model)
        message = payload["choices"][0]["message"]
        message["content"] = message["content"].upper()
        return payload


async def _client_of(app: Gateway) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway")


def _app(model: Replica, history: Replica | None = None, retriever: Replica | None = None) -> Gateway:
    return Gateway(
        Settings(
            services={"inference-gguf": [model.url]},
            history_url=history.url if history else "",
            retriever_url=retriever.url if retriever else "",
        )
    )


async def test_history_and_retriever_calls_carry_the_request_id() -> None:
    model = Replica().on("/v1/models", lambda r: models("m1")).on("/v1/chat/completions", lambda r: completion())
    history, retriever = _history(), _retriever()
    app = _app(model, history, retriever)
    async with running(model, history, retriever), app.api.router.lifespan_context(app.api):
        async with await _client_of(app) as client:
            response = await client.post(
                "/v1/chat/completions",
                content=ask("vpn?", session_id="s1", retrieval="kb"),
                headers={"X-Request-ID": "req-42"},
            )
    assert response.status_code == 200, response.text
    calls = [*history.seen, *retriever.seen, *model.chat_requests()]
    assert [(c.method, c.path) for c in calls] == [
        ("GET", SESSION_PATH),
        ("POST", SESSION_PATH),
        ("POST", SEARCH_PATH),
        ("POST", "/v1/chat/completions"),
    ]
    assert [c.headers.get("X-Request-ID") for c in calls] == ["req-42"] * 4


async def test_an_answer_filter_sees_plain_whole_and_streamed_answers() -> None:
    model = (
        Replica()
        .on("/v1/models", lambda r: models("m1"))
        .on("/v1/chat/completions", lambda r: sse(STREAM) if orjson.loads(r.body).get("stream") else completion("hi"))
    )
    app = _app(model)
    shouting = Shouting()
    app.api.state.answer_filters.append(shouting)
    async with running(model), app.api.router.lifespan_context(app.api), await _client_of(app) as client:
        whole = await client.post("/v1/chat/completions", content=ask("vpn?"))
        streamed = await client.post("/v1/chat/completions", content=ask("vpn?", stream=True))
    assert whole.json()["choices"][0]["message"]["content"] == "HI"
    assert int(whole.headers["content-length"]) == len(whole.content)
    assert streamed.text == b"".join(STREAM).decode().replace("hello ", "HELLO ").replace("world", "WORLD")
    assert shouting.models == ["m1", "m1"]


async def test_filtered_answers_are_what_a_session_stores_and_what_a_seed_route_reframes() -> None:
    model = Replica().on("/v1/models", lambda r: models("m1")).on("/v1/chat/completions", lambda r: sse(STREAM))
    history = _history()
    app = Gateway(
        Settings(services={"inference-gguf": [model.url]}, history_url=history.url, finetune_model="m1")  # type: ignore[arg-type]
    )
    app.api.state.answer_filters.append(Shouting())
    async with running(model, history), app.api.router.lifespan_context(app.api), await _client_of(app) as client:
        response = await client.post("/chat", json={"prompt": "vpn?", "session_id": "s1"})
    assert response.status_code == 200, response.text
    assert response.text == 'data: {"token":"HELLO "}\n\ndata: {"token":"WORLD"}\n\ndata: [DONE]\n\n'
    stored = [m for s in history.seen if s.method == "POST" for m in orjson.loads(s.body)["messages"]]
    assert [(m["role"], m["content"]) for m in stored] == [("user", "vpn?"), ("assistant", "HELLO WORLD")]


async def test_without_filters_a_stream_is_relayed_byte_for_byte() -> None:
    model = Replica().on("/v1/models", lambda r: models("m1")).on("/v1/chat/completions", lambda r: sse(STREAM))
    app = _app(model)
    async with running(model), app.api.router.lifespan_context(app.api), await _client_of(app) as client:
        response = await client.post("/v1/chat/completions", content=ask("vpn?", stream=True))
    assert response.content == b"".join(STREAM)
