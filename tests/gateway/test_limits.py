"""Rate limits (gateway.limits) against a real Redis: the session's private server (tests/conftest.py),
one of the test's own where it is killed, real API keys, the real gateway app, and scripted model replicas
(tests/gateway/fakes.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from chat_common.errors import APIError
from gateway.api_keys import ApiKey
from gateway.config import RateLimit, Settings
from gateway.ledger import Ledger
from gateway.limits import Limiter, reset_text
from scripts.local_redis import LocalRedis
from tests.gateway.fakes import Replica, Reply, chat, chunk, completion, model_replica, running, sse
from tests.gateway.private_redis import bearer, create_key, gateway_for, gateway_on_redis, kill
from tests.services import Service, free_port, start_service

STREAMED = [chunk("Hi"), chunk(finish="stop"), b"data: [DONE]\n\n"]
HI_ESTIMATE = 9  # tokens.estimate_messages of one "hi" message: 2 bytes // 3 + 1, and 8 of framing


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _headers(response: object) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.startswith("x-ratelimit")}  # type: ignore[attr-defined]


async def test_n_requests_pass_under_a_limit_of_n_and_the_next_is_429_with_openai_headers(
    redis_url: str, redis_prefix: str
) -> None:
    replica = model_replica()
    async with (
        running(replica),
        gateway_on_redis(
            {"inference-gguf": [replica.url]}, redis_url, redis_prefix, rate_limit_anonymous={"rpm": 3}
        ) as client,
    ):
        answers = [await client.post("/v1/chat/completions", content=chat()) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0", "0"]
    assert all(a.headers["x-ratelimit-limit-requests"] == "3" for a in answers)
    assert answers[0].headers["x-ratelimit-reset-requests"] in ("20s", "19.999s", "19.998s")
    refused = answers[3]
    assert int(refused.headers["retry-after"]) in (19, 20)  # one request frees every 20 s
    error = refused.json()["error"]
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "3 requests a minute" in error["message"]
    assert len(replica.chat_requests()) == 3  # the refused one changed nothing upstream
    assert "x-ratelimit-limit-tokens" not in refused.headers  # no token limit configured


async def test_concurrent_admissions_let_exactly_the_limit_through(redis_client: Redis, redis_prefix: str) -> None:
    limiter = Limiter({"m1": RateLimit(rpm=10)}, prefix=redis_prefix)
    limiter.ledger = Ledger(redis_client, None)  # through redis-py's client: the fallback for TLS
    plan = limiter.plan(ApiKey("k", "test", None, None, None, None), None, "m1")

    async def one() -> bool:
        try:
            await limiter.admit(plan, 1)
        except APIError:
            return False
        return True

    outcomes = await asyncio.gather(*(one() for _ in range(25)))
    assert sum(outcomes) == 10


async def test_tokens_are_charged_by_estimate_then_corrected_with_the_real_usage(
    redis_url: str, redis_prefix: str
) -> None:
    usage = {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}
    answer = completion()
    answer.payload["usage"] = usage
    replica = model_replica().on("/v1/chat/completions", lambda r: answer)
    async with (
        running(replica),
        gateway_on_redis(
            {"inference-gguf": [replica.url]}, redis_url, redis_prefix, rate_limit_anonymous={"tpm": 100}
        ) as client,
    ):
        first = await client.post("/v1/chat/completions", content=chat())
        second = await client.post("/v1/chat/completions", content=chat())
        third = await client.post("/v1/chat/completions", content=chat())
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(100 - HI_ESTIMATE)
    # the first answer's 50 real tokens replaced its estimate before the second was charged
    assert second.headers["x-ratelimit-remaining-tokens"] == str(100 - 50 - HI_ESTIMATE)
    assert second.status_code == 200
    # 100 tokens used: the third does not fit until about 9 tokens' time (5.4 s) has passed
    assert third.status_code == 429
    assert third.headers["x-ratelimit-remaining-tokens"] == "0"
    assert int(third.headers["retry-after"]) == 6
    assert "100 tokens a minute" in third.json()["error"]["message"]


async def test_a_stream_is_corrected_with_its_usage_chunk_or_its_text_chunks(redis_url: str, redis_prefix: str) -> None:
    usage_event = b'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":{"total_tokens":40}}\n\n'
    with_usage = [chunk("a"), chunk("b"), chunk(finish="stop"), usage_event, b"data: [DONE]\n\n"]
    without = [chunk("a"), chunk("b"), chunk("c"), chunk(finish="stop"), b"data: [DONE]\n\n"]
    bodies = iter([with_usage, without])
    replica = model_replica().on("/v1/chat/completions", lambda r: sse(next(bodies)))
    async with (
        running(replica),
        gateway_on_redis(
            {"inference-gguf": [replica.url]}, redis_url, redis_prefix, rate_limit_anonymous={"tpm": 1000}
        ) as client,
    ):
        streamed = await client.post("/v1/chat/completions", content=chat(stream=True))
        counted = await client.post("/v1/chat/completions", content=chat(stream=True))
        after = await client.post("/v1/chat/completions", content=chat())
    assert streamed.headers["x-ratelimit-remaining-tokens"] == str(1000 - HI_ESTIMATE)
    assert streamed.text.endswith("data: [DONE]\n\n")
    assert counted.headers["x-ratelimit-remaining-tokens"] == str(1000 - 40 - HI_ESTIMATE)
    # 40 (usage) + (9 estimate + 3 text chunks), and this request's estimate; the interval is 60 ms a token,
    # so a little time passing may give back one
    remaining = int(after.headers["x-ratelimit-remaining-tokens"])
    assert 1000 - 40 - (HI_ESTIMATE + 3) - HI_ESTIMATE <= remaining <= 1000 - 40 - (HI_ESTIMATE + 3) - HI_ESTIMATE + 1


async def test_an_error_answer_gives_its_token_estimate_back(redis_url: str, redis_prefix: str) -> None:
    replica = model_replica().on(
        "/v1/chat/completions", lambda r: Reply(status=400, payload={"error": {"message": "too long"}})
    )
    async with (
        running(replica),
        gateway_on_redis(
            {"inference-gguf": [replica.url]}, redis_url, redis_prefix, rate_limit_anonymous={"tpm": 100}
        ) as client,
    ):
        first = await client.post("/v1/chat/completions", content=chat())
        second = await client.post("/v1/chat/completions", content=chat())
    assert first.status_code == second.status_code == 400
    assert first.headers["x-ratelimit-remaining-tokens"] == second.headers["x-ratelimit-remaining-tokens"] == "91"


async def test_a_request_larger_than_the_token_limit_is_told_so(redis_url: str, redis_prefix: str) -> None:
    replica = model_replica()
    big = orjson.dumps({"model": "m1", "messages": [{"role": "user", "content": "x" * 600}]})
    async with (
        running(replica),
        gateway_on_redis(
            {"inference-gguf": [replica.url]}, redis_url, redis_prefix, rate_limit_anonymous={"tpm": 100}
        ) as client,
    ):
        refused = await client.post("/v1/chat/completions", content=big)
    assert refused.status_code == 429
    assert "shorter request" in refused.json()["error"]["message"]
    assert "retry-after" not in refused.headers  # waiting would not help
    assert replica.chat_requests() == []


async def test_a_keys_limits_and_the_model_defaults_both_apply_per_key(redis_url: str, redis_prefix: str) -> None:
    replica = model_replica()
    a_key = bearer(await create_key(redis_url, redis_prefix, "a", rpm=5))
    b_key = bearer(await create_key(redis_url, redis_prefix, "b", rpm=1))
    services = {"inference-gguf": [replica.url]}
    async with (
        running(replica),
        gateway_on_redis(services, redis_url, redis_prefix, auth="on", rate_limits={"m1": {"rpm": 2}}) as client,
        gateway_on_redis(services, redis_url, redis_prefix + "open:", rate_limits={"m1": {"rpm": 2}}) as open_one,
    ):
        a = [await client.post("/v1/chat/completions", content=chat(), headers=a_key) for _ in range(3)]
        b = [await client.post("/v1/chat/completions", content=chat(), headers=b_key) for _ in range(2)]
        anonymous = [await open_one.post("/v1/chat/completions", content=chat()) for _ in range(3)]
    assert [r.status_code for r in a] == [200, 200, 429]  # the model's 2 a minute binds before the key's 5
    assert "the model 'm1''s limit of 2" in a[2].json()["error"]["message"]
    assert a[1].headers["x-ratelimit-limit-requests"] == "2" and a[1].headers["x-ratelimit-remaining-requests"] == "0"
    assert b[0].status_code == 200 and b[0].headers["x-ratelimit-remaining-requests"] == "0"  # its own count
    assert b[1].status_code == 429 and "the API key's limit of 1" in b[1].json()["error"]["message"]
    # without a key and without GATEWAY_RATE_LIMIT_ANONYMOUS nothing is limited, and no header is sent
    assert [r.status_code for r in anonymous] == [200, 200, 200]
    assert _headers(anonymous[0]) == {}


async def test_two_gateways_sharing_one_redis_enforce_one_limit(redis_url: str, redis_prefix: str) -> None:
    replica = model_replica()
    services = {"inference-gguf": [replica.url]}
    async with (
        running(replica),
        gateway_on_redis(services, redis_url, redis_prefix, rate_limit_anonymous={"rpm": 4}) as one,
        gateway_on_redis(services, redis_url, redis_prefix, rate_limit_anonymous={"rpm": 4}) as two,
    ):
        statuses = []
        for index in range(6):
            client = one if index % 2 == 0 else two
            statuses.append((await client.post("/v1/chat/completions", content=chat())).status_code)
    assert statuses == [200, 200, 200, 200, 429, 429]


@pytest.mark.parametrize("policy", ["open", "closed"])
async def test_redis_killed_mid_run_follows_the_failure_policy(
    policy: str, private_redis: Callable[[], LocalRedis], redis_prefix: str
) -> None:
    replica = model_replica()
    own = private_redis()
    async with gateway_for(
        replica, own.url, redis_prefix, rate_limit_anonymous={"rpm": 100}, redis_failure=policy
    ) as client:
        before = await client.post("/v1/chat/completions", content=chat())
        kill(own)
        after = await client.post("/v1/chat/completions", content=chat())
        streamed = await client.post("/v1/chat/completions", content=chat(stream=True))
    assert before.status_code == 200 and before.headers["x-ratelimit-remaining-requests"] == "99"
    if policy == "open":
        assert after.status_code == 200
        assert after.headers["x-switchboard-ratelimit"] == "unavailable"
        assert "x-ratelimit-remaining-requests" not in after.headers
        assert streamed.headers["x-switchboard-ratelimit"] == "unavailable"
        assert len(replica.chat_requests()) == 3
    else:
        assert after.status_code == streamed.status_code == 503
        error = after.json()["error"]
        assert error["code"] == "ratelimit_unavailable" and "GATEWAY_REDIS_FAILURE=open" in error["message"]
        assert after.headers["retry-after"] == "2"
        assert len(replica.chat_requests()) == 1


def test_reset_durations_are_written_as_openai_writes_them() -> None:
    assert [reset_text(ms) for ms in (0, 20, 999, 1000, 8640, 59_999, 60_000, 360_000, 61_500)] == [
        "0ms",
        "20ms",
        "999ms",
        "1s",
        "8.64s",
        "59.999s",
        "1m0s",
        "6m0s",
        "1m1.5s",
    ]


HIT = {"doc_id": "d1", "title": "VPN", "text": "Restart the VPN client.", "score": 0.9, "metadata": {}}
ROUTES = {
    "openai": ("/v1/chat/completions", {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}),
    "alterego": ("/chat/completions", {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}),
    "chatqna": ("/v1/chatqna", {"messages": [{"role": "user", "content": "hi"}]}),
    "finetunellm": ("/chat", {"prompt": "hi", "session_id": "s-limits"}),
    "cern": ("/api/chat", {"history": [], "user_prompt": "hi"}),
    "itsupport": ("/api/v1/chat/", {"query": "vpn"}),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
async def test_every_chat_route_is_limited(
    route: str, redis_url: str, redis_prefix: str, history: Service, tmp_path: Path
) -> None:
    path, body = ROUTES[route]
    profiles = tmp_path / "profiles.yaml"
    profiles.write_text("profiles:\n  - id: cern\n    model: m1\n")
    replica = model_replica().on(
        "/v1/chat/completions",
        lambda r: sse(STREAMED) if orjson.loads(r.body).get("stream") else completion(),
    )
    retriever = Replica().on("/v1/collections/it-support/search", lambda r: Reply(payload={"data": [HIT]}))
    async with (
        running(replica, retriever),
        gateway_on_redis(
            {"inference-gguf": [replica.url]},
            redis_url,
            redis_prefix,
            rate_limit_anonymous={"rpm": 1},
            history_url=history.url,
            retriever_url=retriever.url,
            profiles_file=str(profiles),
            chatqna_model="m1",
            finetune_model="m1",
            rag_model="m1",
        ) as client,
    ):
        first = await client.post(path, json=body)
        second = await client.post(path, json=body)
    assert first.status_code == 200, first.text
    assert second.status_code == 429
    assert second.headers["retry-after"] == "60"
    assert len(replica.chat_requests()) == 1
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    if route != "itsupport":  # that seed's own error shape carries the message as 'detail'
        assert second.json()["error"]["code"] == "rate_limit_exceeded"
    else:
        assert second.json()["error"] == "Too Many Requests"


def test_limits_without_redis_stop_the_gateway_at_start() -> None:
    with pytest.raises(ValueError, match="GATEWAY_REDIS_URL"):
        Settings(rate_limits={"*": {"rpm": 10}})
    assert Settings(rate_limits={"*": {"rpm": 10}}, redis_url="redis://127.0.0.1:1/0").rate_limits["*"].rpm == 10


async def test_a_cache_hit_counts_as_a_request_and_gives_its_tokens_back(redis_url: str, redis_prefix: str) -> None:
    answer = completion()
    answer.payload["usage"] = {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}
    replica = model_replica().on("/v1/chat/completions", lambda r: answer)
    body = chat(temperature=0, cache=True)
    async with (
        running(replica),
        gateway_on_redis(
            {"inference-gguf": [replica.url]},
            redis_url,
            redis_prefix,
            rate_limit_anonymous={"rpm": 10, "tpm": 100},
        ) as client,
    ):
        miss = await client.post("/v1/chat/completions", content=body)
        hit = await client.post("/v1/chat/completions", content=body)
        after = await client.post("/v1/chat/completions", content=chat())
    assert (miss.headers["x-switchboard-cache"], hit.headers["x-switchboard-cache"]) == ("miss", "hit")
    assert hit.headers["x-ratelimit-remaining-requests"] == "8"
    assert hit.headers["x-ratelimit-remaining-tokens"] == str(100 - 50 - HI_ESTIMATE)
    # the hit's estimate was given back: only the miss's 50 real tokens and this request's estimate count
    assert after.headers["x-ratelimit-remaining-tokens"] == str(100 - 50 - HI_ESTIMATE)
    assert len(replica.chat_requests()) == 2


async def test_three_gateway_processes_on_one_redis_enforce_one_limit_per_forwarded_client(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    """Three real ``python -m gateway`` processes (uvicorn, uvloop, the lean Redis connection) on one Redis,
    asked concurrently: one limit per client address, where the address is the ``X-Forwarded-For`` of the
    proxy the gateways trust (GATEWAY_FORWARDED_ALLOW_IPS, by default 127.0.0.1: here, the test)."""
    replica = model_replica()
    env = {
        "GATEWAY_SERVICES": json.dumps({"inference-gguf": [replica.url]}),
        "GATEWAY_REDIS_URL": redis_url,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "GATEWAY_RATE_LIMIT_ANONYMOUS": json.dumps({"rpm": 5}),
    }

    def start(index: int) -> Service:
        port = free_port()
        return start_service(f"gateway-{index}", ["-m", "gateway"], {**env, "GATEWAY_PORT": str(port)}, port, tmp_path)

    async with running(replica):  # the replica answers on this loop while the gateways start in threads
        gateways = await asyncio.gather(*(asyncio.to_thread(start, i) for i in range(3)))
        try:
            async with httpx.AsyncClient(timeout=30) as client:

                async def ask(index: int, address: str) -> int:
                    url = f"{gateways[index % 3].url}/v1/chat/completions"
                    response = await client.post(url, content=chat(), headers={"X-Forwarded-For": address})
                    return response.status_code

                one = await asyncio.gather(*(ask(i, "203.0.113.7") for i in range(8)))
                other = await asyncio.gather(*(ask(i, "203.0.113.8") for i in range(5)))
        finally:
            await asyncio.gather(*(asyncio.to_thread(g.stop) for g in gateways))
    assert sorted(one) == [200] * 5 + [429] * 3
    assert other == [200] * 5  # another client address: a budget of its own
    assert len(replica.chat_requests()) == 10


def test_a_usage_without_total_tokens_counts_prompt_plus_completion() -> None:
    """One reading of ``usage`` for whole answers and streams alike (the relay's and the limits')."""
    from gateway.tokens import usage_total

    assert usage_total({"total_tokens": 40, "prompt_tokens": 1}) == 40
    assert usage_total({"prompt_tokens": 30, "completion_tokens": 12}) == 42
    assert usage_total({"completion_tokens": 5}) == 5
    assert usage_total({}) is None and usage_total(None) is None
