"""The HTTP API through the app's own lifespan (httpx.ASGITransport), on a real SQLite file."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from history.app import create_app
from history.config import Settings

Client = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def client(tmp_path: Path) -> Client:
    """Returns a factory: ``async with client(**settings) as http`` runs the app (lifespan included) with a
    SQLite file under ``tmp_path`` unless the settings say otherwise."""

    @asynccontextmanager
    async def running(**settings: Any) -> AsyncIterator[httpx.AsyncClient]:
        settings.setdefault("sqlite_path", tmp_path / "history.sqlite3")
        settings.setdefault("mongodb_uri", None)  # whatever MONGODB_URI the environment has
        app: FastAPI = create_app(Settings(**settings))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://history") as http:
                yield http

    return running


def user(content: str, **fields: Any) -> dict[str, Any]:
    return {"role": "user", "content": content, **fields}


def error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]  # type: ignore[no-any-return]


async def test_append_read_list_delete(client: Client) -> None:
    async with client() as http:
        appended = await http.post(
            "/v1/sessions/chat-1/messages",
            json={
                "messages": [
                    {"role": "system", "content": "be brief"},
                    user("hi", message_id="u1"),
                    {
                        "role": "assistant",
                        "content": "hel",
                        "status": "interrupted",
                        "model": "m",
                        "completion_tokens": 2,
                        "metadata": {"finish": None},
                    },
                ]
            },
        )
        assert appended.status_code == 200
        body = appended.json()
        assert body["session_id"] == "chat-1"
        assert [m["seq"] for m in body["messages"]] == [1, 2, 3]
        assert body["messages"][2]["status"] == "interrupted"
        assert body["messages"][2]["metadata"] == {"finish": None}
        assert body["messages"][0]["created_at"].endswith("Z")

        retried = await http.post("/v1/sessions/chat-1/messages", json={"messages": [user("hi", message_id="u1")]})
        assert retried.json()["messages"] == [body["messages"][1]]

        read = (await http.get("/v1/sessions/chat-1/messages", params={"limit": 2})).json()
        assert [m["seq"] for m in read["messages"]] == [2, 3] and read["has_more"] is True
        older = (await http.get("/v1/sessions/chat-1/messages", params={"limit": 2, "before_seq": 2})).json()
        assert [m["seq"] for m in older["messages"]] == [1] and older["has_more"] is False
        everything = (await http.get("/v1/sessions/chat-1/messages")).json()
        assert everything["messages"] == body["messages"]

        sessions = (await http.get("/v1/sessions")).json()["sessions"]
        assert [(s["session_id"], s["message_count"]) for s in sessions] == [("chat-1", 3)]

        deleted = await http.delete("/v1/sessions/chat-1")
        assert deleted.json() == {"session_id": "chat-1", "deleted": 3}
        assert (await http.get("/v1/sessions/chat-1/messages")).json()["messages"] == []
        assert (await http.get("/v1/sessions")).json() == {"sessions": []}


async def test_an_unknown_session_reads_as_empty(client: Client) -> None:
    async with client() as http:
        response = await http.get("/v1/sessions/never-seen/messages")
        assert response.status_code == 200
        assert response.json() == {"session_id": "never-seen", "messages": [], "has_more": False}
        assert (await http.delete("/v1/sessions/never-seen")).json()["deleted"] == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "param"),
    [
        ("POST", "/v1/sessions/has%20space/messages", {"messages": [user("x")]}, "session_id"),
        ("POST", f"/v1/sessions/{'x' * 129}/messages", {"messages": [user("x")]}, "session_id"),
        ("GET", "/v1/sessions/semi;colon/messages", None, "session_id"),
        ("DELETE", "/v1/sessions/%C3%BC", None, "session_id"),
        ("POST", "/v1/sessions/s/messages", {"messages": []}, "messages"),
        ("POST", "/v1/sessions/s/messages", {}, "messages"),
        ("POST", "/v1/sessions/s/messages", {"messages": [user("x")] * 101}, "messages"),
        ("POST", "/v1/sessions/s/messages", {"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ("POST", "/v1/sessions/s/messages", {"messages": [{"role": "user"}]}, "messages.0.content"),
        ("POST", "/v1/sessions/s/messages", {"messages": [user("x", status="done")]}, "messages.0.status"),
        ("POST", "/v1/sessions/s/messages", {"messages": [user("x", prompt_tokens=-1)]}, "messages.0.prompt_tokens"),
        ("POST", "/v1/sessions/s/messages", {"messages": [user("x", colour="red")]}, "messages.0.colour"),
        ("POST", "/v1/sessions/s/messages", {"messages": [user("x", metadata=[1])]}, "messages.0.metadata"),
        ("GET", "/v1/sessions/s/messages?limit=0", None, "query.limit"),
        ("GET", "/v1/sessions/s/messages?limit=1001", None, "query.limit"),
        ("GET", "/v1/sessions/s/messages?limit=ten", None, "query.limit"),
        ("GET", "/v1/sessions/s/messages?before_seq=0", None, "query.before_seq"),
        ("GET", "/v1/sessions?offset=-1", None, "query.offset"),
    ],
)
async def test_bad_input_is_a_400_envelope(client: Client, method: str, path: str, body: Any, param: str) -> None:
    async with client() as http:
        response = await http.request(method, path, json=body)
        assert response.status_code == 400, response.text
        assert error(response)["param"] == param
        assert error(response)["type"] == "invalid_request_error"
        assert (await http.get("/v1/sessions")).json() == {"sessions": []}  # nothing was stored


async def test_a_body_that_is_not_json_is_a_400(client: Client) -> None:
    async with client() as http:
        response = await http.post(
            "/v1/sessions/s/messages", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert error(response)["code"] == "invalid_value"


async def test_health_ready_and_metrics(client: Client, tmp_path: Path) -> None:
    async with client() as http:
        assert (await http.get("/health")).json() == {"status": "ok"}
        ready = await http.get("/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "store": f"SQLite file {tmp_path / 'history.sqlite3'}"}
        await http.post("/v1/sessions/s/messages", json={"messages": [user("a"), user("b")]})
        await http.get("/v1/sessions/s/messages")
        await http.get("/v1/sessions")
        text = (await http.get("/metrics")).text
    assert "history_appends_total 1.0" in text
    assert "history_appended_messages_total 2.0" in text
    assert 'history_reads_total{kind="messages"} 1.0' in text
    assert 'history_store_seconds_count{operation="append"} 1.0' in text
    assert "history_store_open 1.0" in text


async def test_an_sqlite_path_that_cannot_be_opened_is_503_until_it_can(client: Client, tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("a file where the database folder should be")
    async with client(sqlite_path=blocker / "history.sqlite3", store_retry_interval_s=0.05) as http:
        assert (await http.get("/health")).status_code == 200
        ready = await http.get("/ready")
        assert ready.status_code == 503
        assert ready.headers["retry-after"] == "2"
        problem = error(ready)
        assert problem["code"] == "store_unavailable" and problem["type"] == "service_unavailable"
        assert str(blocker / "history.sqlite3") in problem["message"]
        assert "HISTORY_SQLITE_PATH" in problem["message"] and "tries again" in problem["message"]
        for response in (
            await http.post("/v1/sessions/s/messages", json={"messages": [user("x")]}),
            await http.get("/v1/sessions/s/messages"),
            await http.get("/v1/sessions"),
            await http.delete("/v1/sessions/s"),
        ):
            assert response.status_code == 503 and error(response)["code"] == "store_unavailable"
        assert "Traceback" not in ready.text

        blocker.unlink()  # the operator fixes the path; the service notices on its next attempt
        for _ in range(100):
            if (await http.get("/ready")).status_code == 200:
                break
            await asyncio.sleep(0.02)
        assert (await http.get("/ready")).status_code == 200
        assert (await http.post("/v1/sessions/s/messages", json={"messages": [user("x")]})).status_code == 200


async def test_a_database_file_removed_under_the_service_makes_it_unready(client: Client, tmp_path: Path) -> None:
    async with client() as http:
        assert (await http.get("/ready")).status_code == 200
        (tmp_path / "history.sqlite3").unlink()
        ready = await http.get("/ready")
        assert ready.status_code == 503 and "removed" in error(ready)["message"]
        assert 'history_store_errors_total{operation="ping"} 1.0' in (await http.get("/metrics")).text


async def test_an_unreachable_mongodb_is_503_naming_it_without_the_password(client: Client) -> None:
    """Real motor against a local port nobody listens on (no MongoDB server can run on this machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with client(mongodb_uri=f"mongodb://app:hunter2@127.0.0.1:{port}", mongodb_timeout_s=0.2) as http:
        ready = await http.get("/ready")
        append = await http.post("/v1/sessions/s/messages", json={"messages": [user("x")]})
    for response in (ready, append):
        assert response.status_code == 503
        problem = error(response)
        assert problem["code"] == "store_unavailable"
        assert f"MongoDB at 127.0.0.1:{port}" in problem["message"] and "hunter2" not in problem["message"]
