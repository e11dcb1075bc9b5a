"""CORS on the real gateway app: preflights answered for the chat hot path and FastAPI's routes before any
API key is asked for, allowed origins only, headers on refusals and streams too; off by default."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from gateway.api_keys import KeyStore
from tests.gateway.fakes import chat, chunk, gateway, model_replica, running, sse

ORIGIN = "https://chat.example.com"
PREFLIGHT = {
    "Origin": ORIGIN,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "authorization, content-type",
}


def _settings(redis_url: str, redis_prefix: str) -> dict[str, object]:
    return {"auth": "on", "redis_url": redis_url, "redis_prefix": redis_prefix, "cors_origins": [ORIGIN]}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat", "/v1/models", "/api/chat"])
async def test_a_preflight_is_answered_before_auth_for_allowed_origins(
    path: str, redis_url: str, redis_prefix: str
) -> None:
    replica = model_replica()
    async with (
        running(replica),
        gateway({"inference-gguf": [replica.url]}, **_settings(redis_url, redis_prefix)) as client,
    ):
        allowed = await client.options(path, headers=PREFLIGHT)
        other = await client.options(path, headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert allowed.status_code == 200, allowed.text
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    assert replica.chat_requests() == []


async def test_answers_refusals_and_streams_carry_the_cors_headers(redis_url: str, redis_prefix: str) -> None:
    redis = Redis.from_url(redis_url)
    _, secret = await KeyStore(redis, redis_prefix).create("browser")
    await redis.aclose()
    stream = [chunk("Hi", "stop"), b"data: [DONE]\n\n"]
    replica = model_replica().on("/v1/chat/completions", lambda r: sse(stream))
    async with (
        running(replica),
        gateway({"inference-gguf": [replica.url]}, **_settings(redis_url, redis_prefix)) as client,
    ):
        refused = await client.post("/v1/chat/completions", content=chat(), headers={"Origin": ORIGIN})
        headers = {"Origin": ORIGIN, "Authorization": f"Bearer {secret}"}
        streamed = await client.post("/v1/chat/completions", content=chat(stream=True), headers=headers)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN  # the browser can read why
    assert streamed.status_code == 200 and streamed.content == b"".join(stream)
    assert streamed.headers["access-control-allow-origin"] == ORIGIN
    assert "x-request-id" in streamed.headers["access-control-expose-headers"].lower()


async def test_cors_is_off_by_default() -> None:
    replica = model_replica()
    async with running(replica), gateway({"inference-gguf": [replica.url]}) as client:
        preflight = await client.options("/v1/chat/completions", headers=PREFLIGHT)
        answer = await client.post("/v1/chat/completions", content=chat(), headers={"Origin": ORIGIN})
    assert preflight.status_code == 405  # no preflight handling: the chat route takes POST only
    assert answer.status_code == 200
    assert not any(name.startswith("access-control-") for name in answer.headers)
