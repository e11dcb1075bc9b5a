"""The response cache (gateway.cache) against a real Redis (the session's private server), the real gateway
app and scripted model replicas: a hit replays the miss's exact bytes, stream and whole, and nothing is
cached for sampled requests, errors, interrupted streams or sessions."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import orjson
import pytest
from redis.asyncio import Redis

from gateway.app import Gateway
from gateway.config import Settings
from scripts.local_redis import LocalRedis
from tests.gateway.fakes import (
    Reply,
    chat,
    chunk,
    completion,
    model_replica,
    running,
    serve_to_a_client_that_leaves,
    sse,
)
from tests.gateway.private_redis import app_on_redis, asgi_post, bearer, create_key, gateway_on_redis
from tests.services import Service

STREAM = [chunk("Hel"), chunk("lo"), chunk(" there"), chunk(finish="stop"), b"data: [DONE]\n\n"]


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


async def test_a_streamed_hit_replays_the_misss_bytes_with_the_same_boundaries(
    redis_url: str, redis_prefix: str
) -> None:
    replica = model_replica().on("/v1/chat/completions", lambda r: sse(STREAM))
    body = chat(stream=True, seed=7, cache=True)
    async with running(replica), app_on_redis({"g": [replica.url]}, redis_url, redis_prefix) as app:
        miss, miss_pieces = await asgi_post(app, "/v1/chat/completions", body)
        hit, hit_pieces = await asgi_post(app, "/v1/chat/completions", body)
    assert miss["x-switchboard-cache"] == "miss" and hit["x-switchboard-cache"] == "hit"
    assert len(replica.chat_requests()) == 1
    assert miss_pieces == STREAM  # the fake writes one event at a time (10 ms apart), the gateway relays each
    assert hit_pieces == miss_pieces
    assert hit["content-type"] == miss["content-type"] == "text/event-stream; charset=utf-8"


async def test_a_whole_hit_is_the_misss_body_and_key_order_and_number_forms_do_not_matter(
    redis_url: str, redis_prefix: str
) -> None:
    replica = model_replica(answer="cached words")
    first = orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "hi"}], "temperature": 0})
    same = b'{"temperature": 0.0, "stream": false, "messages": [{"content": "hi", "role": "user"}], "model": "m1"}'
    headers = {"X-Switchboard-Cache": "use"}
    async with running(replica), gateway_on_redis({"g": [replica.url]}, redis_url, redis_prefix) as client:
        miss = await client.post("/v1/chat/completions", content=first, headers=headers)
        hit = await client.post("/v1/chat/completions", content=same, headers=headers)
        other = await client.post("/v1/chat/completions", content=chat(temperature=0, max_tokens=5), headers=headers)
    assert (miss.headers["x-switchboard-cache"], hit.headers["x-switchboard-cache"]) == ("miss", "hit")
    assert hit.content == miss.content and miss.json()["choices"][0]["message"]["content"] == "cached words"
    assert other.headers["x-switchboard-cache"] == "miss"  # max_tokens is part of the key
    assert len(replica.chat_requests()) == 2


async def test_nothing_is_cached_without_opt_in_or_for_sampled_requests(redis_url: str, redis_prefix: str) -> None:
    replica = model_replica()
    async with running(replica), gateway_on_redis({"g": [replica.url]}, redis_url, redis_prefix) as client:
        plain = [await client.post("/v1/chat/completions", content=chat(temperature=0)) for _ in range(2)]
        sampled = [await client.post("/v1/chat/completions", content=chat(cache=True)) for _ in range(2)]
        hot = [await client.post("/v1/chat/completions", content=chat(cache=True, temperature=0.7)) for _ in range(2)]
        bad = await client.post("/v1/chat/completions", content=chat(cache="yes", temperature=0))
    assert all("x-switchboard-cache" not in r.headers for r in plain + sampled + hot)
    assert len(replica.chat_requests()) == 6
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "cache"


async def test_errors_and_streams_cut_short_are_not_cached(redis_url: str, redis_prefix: str) -> None:
    replies = iter(
        [
            Reply(status=500, payload={"error": {"message": "boom"}}),
            sse([chunk("half")], end="abort"),
            sse(STREAM),
            completion("fine"),
        ]
    )
    replica = model_replica().on("/v1/chat/completions", lambda r: next(replies))
    whole = chat(temperature=0, cache=True)
    streamed = chat(temperature=0, cache=True, stream=True)
    async with running(replica), gateway_on_redis({"g": [replica.url]}, redis_url, redis_prefix) as client:
        failed = await client.post("/v1/chat/completions", content=whole)
        cut = await client.post("/v1/chat/completions", content=streamed)
        complete = await client.post("/v1/chat/completions", content=streamed)
        answered = await client.post("/v1/chat/completions", content=whole)
    assert failed.status_code == 500 and failed.headers["x-switchboard-cache"] == "miss"
    assert "stream_interrupted" in cut.text and cut.headers["x-switchboard-cache"] == "miss"
    assert complete.headers["x-switchboard-cache"] == "miss" and complete.content == b"".join(STREAM)
    assert answered.status_code == 200 and answered.headers["x-switchboard-cache"] == "miss"
    assert len(replica.chat_requests()) == 4


async def test_a_stream_the_client_left_is_not_cached(redis_client: Redis, redis_url: str, redis_prefix: str) -> None:
    replica = model_replica().on("/v1/chat/completions", lambda r: sse([chunk("One"), chunk(" two")], end="hang"))
    settings = Settings(services={"g": [replica.url]}, redis_url=redis_url, redis_prefix=redis_prefix)
    app = Gateway(settings)
    async with running(replica), app.api.router.lifespan_context(app.api):
        pieces = await serve_to_a_client_that_leaves(app, chat(stream=True, seed=1, cache=True))
    assert pieces == [chunk("One"), chunk(" two")]
    assert await redis_client.keys(f"{redis_prefix}*") == []


async def test_session_requests_are_never_cached(redis_url: str, redis_prefix: str, history: Service) -> None:
    replica = model_replica()
    body = chat(temperature=0, cache=True, session_id="s-cache")
    async with (
        running(replica),
        gateway_on_redis({"g": [replica.url]}, redis_url, redis_prefix, history_url=history.url) as client,
    ):
        answers = [await client.post("/v1/chat/completions", content=body) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    assert all("x-switchboard-cache" not in a.headers for a in answers)
    assert len(replica.chat_requests()) == 2


async def test_a_profile_with_cache_opts_in_and_keys_do_not_share_answers(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  - id: steady\n    model: m1\n    cache: true\n    sampling: {temperature: 0}\n")
    replica = model_replica()
    a_key = bearer(await create_key(redis_url, redis_prefix, "a"))
    b_key = bearer(await create_key(redis_url, redis_prefix, "b"))
    body = orjson.dumps({"model": "steady", "messages": [{"role": "user", "content": "hi"}]})
    async with (
        running(replica),
        gateway_on_redis(
            {"g": [replica.url]}, redis_url, redis_prefix, auth="on", profiles_file=str(profiles)
        ) as client,
    ):
        a = [await client.post("/v1/chat/completions", content=body, headers=a_key) for _ in range(2)]
        b = await client.post("/v1/chat/completions", content=body, headers=b_key)
        off = await client.post("/v1/chat/completions", content=body, headers={**a_key, "X-Switchboard-Cache": "off"})
    assert [r.headers["x-switchboard-cache"] for r in a] == ["miss", "hit"]
    assert a[1].json()["model"] == "steady" and a[1].content == a[0].content
    assert b.headers["x-switchboard-cache"] == "miss"  # key b does not read key a's answers
    assert "x-switchboard-cache" not in off.headers
    assert len(replica.chat_requests()) == 3


async def test_redis_down_answers_from_the_model_and_says_so(
    private_redis: Callable[[], LocalRedis], redis_prefix: str
) -> None:
    replica = model_replica()
    own = private_redis()
    async with running(replica), gateway_on_redis({"g": [replica.url]}, own.url, redis_prefix) as client:
        first = await client.post("/v1/chat/completions", content=chat(temperature=0, cache=True))
        own.stop()
        down = await client.post("/v1/chat/completions", content=chat(temperature=0, cache=True))
    assert first.headers["x-switchboard-cache"] == "miss"
    assert down.status_code == 200 and down.headers["x-switchboard-cache"] == "unavailable"
    assert len(replica.chat_requests()) == 2
