"""Conversations through the gateway: a scripted model replica (records what the model was sent) and the
real history service on SQLite, started as a subprocess."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from gateway.app import Gateway
from gateway.config import Settings
from tests.gateway.fakes import (
    Replica,
    chat,
    chunk,
    dead_url,
    gateway,
    model_replica,
    running,
    serve_to_a_client_that_leaves,
    sse,
)
from tests.services import Service


def _stored(history: Service, session: str) -> list[dict[str, Any]]:
    return httpx.get(f"{history.url}/v1/sessions/{session}/messages", params={"limit": 100}).json()["messages"]


def _append(history: Service, session: str, messages: list[dict[str, Any]]) -> None:
    httpx.post(f"{history.url}/v1/sessions/{session}/messages", json={"messages": messages}).raise_for_status()


def _sent_messages(replica: Replica, i: int) -> list[dict[str, str]]:
    return [
        {"role": m["role"], "content": m["content"]} for m in orjson.loads(replica.chat_requests()[i].body)["messages"]
    ]


async def test_the_second_turn_carries_the_first_and_both_are_stored_in_order(history: Service) -> None:
    replica = model_replica(context_length=4096, answer="Paris.")
    settings = {"history_url": history.url}
    async with running(replica), gateway({"inference-gguf": [replica.url]}, **settings) as client:
        first = await client.post(
            "/v1/chat/completions",
            content=orjson.dumps(
                {
                    "model": "m1",
                    "session_id": "s-two-turns",
                    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital?"}],
                }
            ),
        )
        second = await client.post("/v1/chat/completions", content=chat(), headers={"X-Session-ID": "s-two-turns"})
    assert first.status_code == second.status_code == 200
    assert second.headers["x-session-id"] == "s-two-turns"
    assert "session_id" not in orjson.loads(replica.chat_requests()[0].body)  # an extension: not sent upstream
    assert _sent_messages(replica, 1) == [
        {"role": "user", "content": "Capital?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "hi"},
    ]
    stored = _stored(history, "s-two-turns")
    assert [(m["seq"], m["role"], m["content"], m["status"]) for m in stored] == [
        (1, "user", "Capital?", "complete"),
        (2, "assistant", "Paris.", "complete"),
        (3, "user", "hi", "complete"),
        (4, "assistant", "Paris.", "complete"),
    ]
    assert stored[1]["model"] == "m1" and stored[1]["completion_tokens"] == 1


async def test_a_streamed_answer_is_stored_whole(history: Service) -> None:
    events = [chunk("Hel"), chunk("lo"), chunk(finish="stop"), b"data: [DONE]\n\n"]
    replica = model_replica(context_length=4096).on("/v1/chat/completions", lambda r: sse(events))
    async with running(replica), gateway({"inference-gguf": [replica.url]}, history_url=history.url) as client:
        response = await client.post("/v1/chat/completions", content=chat(stream=True, session_id="s-stream"))
    assert response.content == b"".join(events)  # still byte for byte
    assert [(m["role"], m["content"], m["status"]) for m in _stored(history, "s-stream")] == [
        ("user", "hi", "complete"),
        ("assistant", "Hello", "complete"),
    ]


async def test_a_stream_cut_upstream_is_stored_as_interrupted(history: Service) -> None:
    replica = model_replica(context_length=4096).on(
        "/v1/chat/completions", lambda r: sse([chunk("Half an ans")], end="abort")
    )
    async with running(replica), gateway({"inference-gguf": [replica.url]}, history_url=history.url) as client:
        response = await client.post("/v1/chat/completions", content=chat(stream=True, session_id="s-cut"))
    assert b"stream_interrupted" in response.content
    answer = _stored(history, "s-cut")[-1]
    assert (answer["content"], answer["status"]) == ("Half an ans", "interrupted")
    assert "stopped the stream early" in answer["metadata"]["error"]


async def test_a_client_that_leaves_mid_stream_has_what_it_was_sent_stored_as_interrupted(history: Service) -> None:
    replica = model_replica(context_length=4096).on(
        "/v1/chat/completions", lambda r: sse([chunk("One"), chunk(" two")], end="hang")
    )
    app = Gateway(Settings(services={"inference-gguf": [replica.url]}, history_url=history.url))
    async with running(replica), app.api.router.lifespan_context(app.api):
        await serve_to_a_client_that_leaves(app, chat(stream=True, session_id="s-gone"))
        metrics = (
            await httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://g").get("/metrics")
        ).text
    answer = _stored(history, "s-gone")[-1]
    assert (answer["content"], answer["status"]) == ("One two", "interrupted")
    assert 'gateway_chat_requests_total{model="m1",status="499"} 1.0' in metrics


async def test_history_down_fails_the_request_before_any_model_work_by_default() -> None:
    replica = model_replica(context_length=4096)
    async with running(replica), gateway({"inference-gguf": [replica.url]}, history_url=dead_url()) as client:
        response = await client.post("/v1/chat/completions", content=chat(session_id="s"))
        plain = await client.post("/v1/chat/completions", content=chat())
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "history_unavailable"
    assert "GATEWAY_HISTORY_ON_ERROR" in response.json()["error"]["message"]
    assert plain.status_code == 200  # requests without a session do not need the history service
    assert len(replica.chat_requests()) == 1


async def test_history_down_can_be_answered_without_history_and_says_so() -> None:
    replica = model_replica(context_length=4096)
    async with (
        running(replica),
        gateway({"inference-gguf": [replica.url]}, history_url=dead_url(), history_on_error="answer") as client,
    ):
        response = await client.post("/v1/chat/completions", content=chat(session_id="s"))
    assert response.status_code == 200
    assert response.headers["x-switchboard-history"] == "unavailable"


async def test_history_is_trimmed_to_the_models_context(history: Service) -> None:
    long = "word " * 120  # about 200 estimated tokens a message
    turns = [
        {"role": role, "content": f"{i}:{long}", "message_id": f"seed-{i}"}
        for i, role in enumerate(["user", "assistant"] * 4)
    ]
    _append(history, "s-trim", turns)
    replica = model_replica(context_length=1024)
    async with running(replica), gateway({"inference-gguf": [replica.url]}, history_url=history.url) as client:
        response = await client.post("/v1/chat/completions", content=chat(session_id="s-trim", max_tokens=100))
    assert response.status_code == 200
    sent = _sent_messages(replica, 0)
    assert 2 <= len(sent) - 1 < 8  # some history kept, not all of it
    assert sent[0]["role"] == "user" and sent[-1] == {"role": "user", "content": "hi"}
    assert [m["content"][:2] for m in sent[:-1]] == [f"{i}:" for i in range(8 - (len(sent) - 1), 8)]


@pytest.mark.parametrize("session", ["", "a b", "x" * 129, 7])
async def test_a_malformed_session_id_is_400(session: object, history: Service) -> None:
    replica = model_replica(context_length=4096)
    async with running(replica), gateway({"inference-gguf": [replica.url]}, history_url=history.url) as client:
        response = await client.post("/v1/chat/completions", content=chat(session_id=session))
    assert response.status_code == 400 and response.json()["error"]["param"] == "session_id"
    assert replica.chat_requests() == []


async def test_the_finetune_backend_routes(history: Service) -> None:
    events = [chunk("Bon"), chunk("jour"), chunk(finish="stop"), b"data: [DONE]\n\n"]
    replica = model_replica(context_length=4096).on("/v1/chat/completions", lambda r: sse(events))
    async with (
        running(replica),
        gateway({"inference-gguf": [replica.url]}, history_url=history.url, finetune_model="m1") as client,
    ):
        await client.post("/clear-history")  # the "default" session may hold other tests' turns
        streamed = await client.post("/chat", json={"prompt": "Say hello"})
        listed = (await client.get("/messages", params={"limit": 10})).json()
        status = (await client.get("/status")).json()
        root = await client.get("/")
        bad = await client.post("/chat", json={"session_id": "x"})
        cleared = (await client.post("/clear-history", params={"session_id": "default"})).json()
        after = (await client.get("/messages")).json()
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert streamed.content == b'data: {"token":"Bon"}\n\ndata: {"token":"jour"}\n\ndata: [DONE]\n\n'
    assert [(m["role"], m["content"]) for m in listed["messages"]] == [("user", "Say hello"), ("assistant", "Bonjour")]
    assert status == {"status": "ok", "model": "m1", "model_loaded": True, "database": "connected"}
    assert root.status_code == 200
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "prompt"
    assert cleared["deleted"] == 2 and after["messages"] == []


async def test_sessions_off_refuses_a_session_id() -> None:
    replica = model_replica(context_length=4096)
    async with running(replica), gateway({"inference-gguf": [replica.url]}, history_url="") as client:
        response = await client.post("/v1/chat/completions", content=chat(session_id="s"))
    assert response.status_code == 400 and response.json()["error"]["code"] == "sessions_disabled"


def test_history_fixture_is_sqlite(history: Service) -> None:
    assert "sqlite" in history.log().lower()
