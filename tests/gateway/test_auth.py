"""API keys on the real gateway app against a real Redis (the session's private server, tests/conftest.py):
keys created, used, revoked and expired; the per-model allow-list; missing and wrong keys refused on every
route, the streaming chat routes included, before any model is asked; Redis down while auth is on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from redis.asyncio import Redis
from starlette.datastructures import State
from starlette.types import Receive, Scope, Send

from gateway.api_keys import ApiKey, KeyStore, digest
from gateway.app import Gateway
from gateway.auth import OPEN_PATHS, Authentication, KeyCache
from gateway.chat import CHAT_PATHS
from gateway.config import Settings
from scripts.local_redis import LocalRedis
from tests.gateway.fakes import Reply, chat, chunk, gateway, model_replica, running, sse

STREAM = [chunk("Bon"), chunk("jour", "stop"), b"data: [DONE]\n\n"]


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[KeyStore]:
    redis = Redis.from_url(redis_url)
    yield KeyStore(redis, redis_prefix)
    await redis.aclose()


def _auth(redis_url: str, redis_prefix: str, **extra: object) -> dict[str, object]:
    """Auth on, without the per-process key cache unless ``extra`` sets one (Redis answers every check)."""
    return {"auth": "on", "redis_url": redis_url, "redis_prefix": redis_prefix, "auth_cache_s": 0, **extra}


def _bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def _routes() -> list[tuple[str, str]]:
    """Every (method, path) the gateway serves but the open ones: the chat routes and every FastAPI route
    of its OpenAPI document, path parameters filled in."""
    app = Gateway(Settings())
    found = {("POST", path) for path in CHAT_PATHS}
    for path, operations in app.api.openapi()["paths"].items():
        if path not in OPEN_PATHS:
            found |= {(method.upper(), path.replace("{model}", "m1")) for method in operations}
    return sorted(found)


ROUTES = _routes()


def test_the_route_list_covers_the_chat_routes_and_fastapis() -> None:
    assert {("POST", path) for path in CHAT_PATHS} <= set(ROUTES)
    assert {("GET", "/v1/models"), ("POST", "/api/chat"), ("GET", "/messages")} <= set(ROUTES)
    assert not any(path in OPEN_PATHS for _, path in ROUTES)


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_every_route_refuses_a_missing_or_wrong_key_before_any_work(
    method: str, path: str, redis_url: str, redis_prefix: str, store: KeyStore
) -> None:
    await store.create("someone")  # a key exists; the requests below do not send it
    replica = model_replica().on("/v1/chat/completions", lambda r: sse(STREAM))
    async with (
        running(replica),
        gateway({"inference-gguf": [replica.url]}, **_auth(redis_url, redis_prefix)) as client,
    ):
        body = chat(stream=True) if method == "POST" else None
        missing = await client.request(method, path, content=body)
        wrong = await client.request(method, path, content=body, headers=_bearer("sk-not-a-key-of-this-gateway"))
        wrong_x = await client.request(method, path, content=body, headers={"x-api-key": "sk-wrong"})
    for response, code in [(missing, "missing_api_key"), (wrong, "invalid_api_key"), (wrong_x, "invalid_api_key")]:
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"] == {
            "message": response.json()["error"]["message"],
            "type": "authentication_error",
            "param": None,
            "code": code,
        }
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.headers["x-request-id"]  # refused inside the request context
    assert "sk-not-a-key-of-this-gateway" not in wrong.text  # a wrong key is not echoed whole
    assert replica.chat_requests() == []


async def test_open_paths_need_no_key(redis_url: str, redis_prefix: str) -> None:
    replica = model_replica()
    async with running(replica), gateway({"inference-gguf": [replica.url]}, **_auth(redis_url, redis_prefix)) as client:
        for path in ["/health", "/ready", "/metrics", "/openapi.json", "/docs"]:
            assert (await client.get(path)).status_code == 200, path


async def test_a_created_key_answers_streamed_and_whole_then_revoked_it_is_refused(
    redis_url: str, redis_prefix: str, store: KeyStore
) -> None:
    key, secret = await store.create("app", models=("m1",))
    replica = model_replica()
    replica.on("/v1/chat/completions", lambda r: sse(STREAM) if b'"stream":true' in r.body else Reply(status=200))
    async with (
        running(replica),
        gateway({"inference-gguf": [replica.url]}, **_auth(redis_url, redis_prefix)) as client,
    ):
        streamed = await client.post("/v1/chat/completions", content=chat(stream=True), headers=_bearer(secret))
        by_header = await client.post("/chat/completions", content=chat(), headers={"x-api-key": secret})
        listed = await client.get("/v1/models", headers=_bearer(secret))
        assert await store.revoke(key.id)
        revoked = await client.post("/v1/chat/completions", content=chat(), headers=_bearer(secret))
    assert streamed.status_code == 200 and streamed.content == b"".join(STREAM)
    assert by_header.status_code == 200
    assert listed.status_code == 200
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "invalid_api_key"
    assert len(replica.chat_requests()) == 2


async def test_the_allow_list_refuses_other_models_with_403(redis_url: str, redis_prefix: str, store: KeyStore) -> None:
    _, secret = await store.create("only-m2", models=("m2",))
    replica = model_replica()
    async with (
        running(replica),
        gateway({"inference-gguf": [replica.url]}, **_auth(redis_url, redis_prefix)) as client,
    ):
        chat_route = await client.post("/v1/chat/completions", content=chat("m1"), headers=_bearer(secret))
        finetune = await client.post("/chat", json={"prompt": "hi"}, headers=_bearer(secret))
        card = await client.get("/v1/models/m1", headers=_bearer(secret))
        load = await client.post("/v1/models/m1/load", headers=_bearer(secret))
    for response in (chat_route, finetune, card, load):
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["type"] == "permission_error" and error["code"] == "model_not_allowed"
        assert "m2" in error["message"]  # says what the key may use
    assert replica.chat_requests() == []


async def test_an_expired_key_is_refused_with_401(redis_url: str, redis_prefix: str, store: KeyStore) -> None:
    _, secret = await store.create("old", expires_at=time.time() - 1)
    replica = model_replica()
    async with (
        running(replica),
        gateway({"inference-gguf": [replica.url]}, **_auth(redis_url, redis_prefix)) as client,
    ):
        response = await client.post("/v1/chat/completions", content=chat(), headers=_bearer(secret))
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "expired_api_key"
    assert replica.chat_requests() == []


async def test_redis_down_with_auth_on_is_503_never_a_pass(
    redis_prefix: str, private_redis: Callable[[], LocalRedis]
) -> None:
    server = private_redis()
    redis = Redis.from_url(server.url)
    _, secret = await KeyStore(redis, redis_prefix).create("app")
    await redis.aclose()
    replica = model_replica()
    async with (
        running(replica),
        gateway({"inference-gguf": [replica.url]}, **_auth(server.url, redis_prefix)) as client,
    ):
        before = await client.post("/v1/chat/completions", content=chat(), headers=_bearer(secret))
        ready_before = await client.get("/ready")
        server.stop()
        during = await client.post("/v1/chat/completions", content=chat(), headers=_bearer(secret))
        health = await client.get("/health")
        ready = await client.get("/ready")
    assert before.status_code == 200
    assert ready_before.json()["redis"] == "ok"
    # readiness reports Redis, and stays 200: every replica shares it (taking all out would be a full outage)
    assert ready.status_code == 200 and ready.json()["redis"].startswith("unreachable: ")
    assert during.status_code == 503, during.text
    assert during.json()["error"]["code"] == "auth_unavailable"
    assert "GATEWAY_REDIS_URL" in during.json()["error"]["message"]
    assert health.status_code == 200
    assert len(replica.chat_requests()) == 1


async def test_a_gateway_whose_redis_is_dead_at_start_starts_and_answers_503(redis_prefix: str) -> None:
    from tests.services import free_port

    replica = model_replica()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with running(replica), gateway({"inference-gguf": [replica.url]}, **_auth(dead, redis_prefix)) as client:
        response = await client.post("/v1/chat/completions", content=chat(), headers=_bearer("sk-anything"))
    assert response.status_code == 503 and response.json()["error"]["code"] == "auth_unavailable"


async def test_the_layer_puts_the_keys_record_in_the_request_state(store: KeyStore) -> None:
    """The contract the rate limits build on: scope['state']['api_key'] is the ApiKey, None with auth off."""
    key, secret = await store.create("limits", models=("m1", "m2"), rpm=60, tpm=1000, expires_at=4e9)
    seen: list[ApiKey | None] = []

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["state"]["api_key"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    state = State({"api_keys": store})
    for enabled in (True, False):
        transport = httpx.ASGITransport(app=Authentication(inner, state=state, enabled=enabled))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/x", headers=_bearer(secret))).status_code == 204
    assert seen == [ApiKey(key.id, "limits", ("m1", "m2"), 60, 1000, 4e9), None]
    assert seen[0] == key


async def test_redis_holds_the_sha256_of_a_secret_never_the_secret(
    redis_url: str, redis_prefix: str, store: KeyStore
) -> None:
    _, secret = await store.create("hashed")
    redis = Redis.from_url(redis_url)
    names = [name async for name in redis.scan_iter(match=f"{redis_prefix}*")]
    dumped = b"".join(names) + b"".join([b"".join((await redis.hgetall(name)).values()) for name in names])
    await redis.aclose()
    assert secret.encode() not in dumped
    assert digest(secret).encode() in dumped


async def test_with_the_key_cache_a_revoked_key_is_refused_once_its_entry_ends(
    redis_url: str, redis_prefix: str, store: KeyStore
) -> None:
    key, secret = await store.create("cached")
    replica = model_replica()
    settings = _auth(redis_url, redis_prefix, auth_cache_s=0.5)
    async with running(replica), gateway({"inference-gguf": [replica.url]}, **settings) as client:
        first = await client.get("/v1/models", headers=_bearer(secret))
        await store.revoke(key.id)
        cached = await client.get("/v1/models", headers=_bearer(secret))  # within the 0.5 s entry
        await asyncio.sleep(0.6)
        after = await client.get("/v1/models", headers=_bearer(secret))
    assert (first.status_code, cached.status_code, after.status_code) == (200, 200, 401)


def test_the_key_cache_keeps_known_keys_for_its_ttl_only() -> None:
    now = [100.0]
    cache = KeyCache(2.0, max_entries=2, clock=lambda: now[0])
    key = ApiKey("key-1", "a")
    cache.put("d1", key)
    assert cache.get("d1") == key and cache.get("d2") is None
    now[0] = 101.9
    assert cache.get("d1") == key
    now[0] = 102.0
    assert cache.get("d1") is None  # ended: Redis is asked again
    cache.put("d1", key)
    cache.put("d2", key)
    cache.put("d3", key)  # full: starts over
    assert cache.get("d1") is None and cache.get("d3") == key
    off = KeyCache(0)
    off.put("d1", key)
    assert off.get("d1") is None
