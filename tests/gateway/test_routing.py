from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import httpx

from tests.gateway.fakes import Replica, Reply, chat, completion, dead_url, gateway, models, running


async def test_models_are_discovered_from_every_service() -> None:
    gguf = Replica().on("/v1/models", lambda r: models("a", "b"))
    hf = Replica().on("/v1/models", lambda r: models("c", owner="inference-hf"))
    async with running(gguf, hf), gateway({"inference-gguf": [gguf.url], "inference-hf": [hf.url]}) as client:
        listed = (await client.get("/v1/models")).json()
    assert [(m["id"], m["owned_by"]) for m in listed["data"]] == [
        ("a", "inference-gguf"),
        ("b", "inference-gguf"),
        ("c", "inference-hf"),
    ]


async def test_each_model_goes_to_the_service_that_owns_it() -> None:
    gguf = (
        Replica().on("/v1/models", lambda r: models("a")).on("/v1/chat/completions", lambda r: completion("from gguf"))
    )
    hf = Replica().on("/v1/models", lambda r: models("c")).on("/v1/chat/completions", lambda r: completion("from hf"))
    async with running(gguf, hf), gateway({"inference-gguf": [gguf.url], "inference-hf": [hf.url]}) as client:
        a = await client.post("/v1/chat/completions", content=chat("a"))
        c = await client.post("/v1/chat/completions", content=chat("c"))
    assert a.json()["choices"][0]["message"]["content"] == "from gguf"
    assert c.json()["choices"][0]["message"]["content"] == "from hf"


async def test_body_and_request_id_reach_the_upstream_unchanged() -> None:
    gguf = Replica().on("/v1/models", lambda r: models("m1")).on("/v1/chat/completions", lambda r: completion())
    body = chat(temperature=0, some_new_field={"x": 1})
    async with running(gguf), gateway({"inference-gguf": [gguf.url]}) as client:
        response = await client.post("/v1/chat/completions", content=body, headers={"X-Request-ID": "trace-7"})
    sent = gguf.chat_requests()[0]
    assert sent.body == body
    assert sent.headers["X-Request-ID"] == "trace-7"
    assert response.headers["x-request-id"] == "trace-7"


async def test_a_new_model_is_found_without_waiting_for_the_refresh() -> None:
    served = ["m1"]
    gguf = Replica().on("/v1/models", lambda r: models(*served)).on("/v1/chat/completions", lambda r: completion())
    async with running(gguf), gateway({"inference-gguf": [gguf.url]}, refresh_interval_s=3600) as client:
        served.append("m2")
        # the on-demand re-read is rate-limited (once a second): ask until one re-read has found m2
        response = await _until(
            lambda r: r.status_code != 404, lambda: client.post("/v1/chat/completions", content=chat("m2"))
        )
    assert response.status_code == 200


async def test_a_replica_that_went_away_is_skipped_and_the_next_one_answers() -> None:
    first = Replica().on("/v1/models", lambda r: models("m1"))
    second = (
        Replica().on("/v1/models", lambda r: models("m1")).on("/v1/chat/completions", lambda r: completion("second"))
    )
    async with running(second), gateway({"inference-gguf": [first.url, second.url]}) as client:
        await first.start()

        async def reread() -> httpx.Response:  # an unknown model makes the gateway re-read its services
            assert (await client.post("/v1/chat/completions", content=chat("not-served"))).status_code == 404
            return await client.get("/ready")

        ready = await _until(lambda r: not r.json()["unreachable"], reread)
        assert len(ready.json()["unreachable"]) == 0  # the re-read found both
        await first.stop()  # now refuses connections
        answers = [(await client.post("/v1/chat/completions", content=chat())) for _ in range(3)]
        metrics = (await client.get("/metrics")).text
    assert [a.status_code for a in answers] == [200, 200, 200], answers[0].text
    assert all(a.json()["choices"][0]["message"]["content"] == "second" for a in answers)
    # one refused connection, then routed around until the next read of the services
    assert 'gateway_upstream_failures_total{reason="connect",service="inference-gguf"} 1.0' in metrics


async def test_requests_spread_over_replicas() -> None:
    replicas = [
        Replica().on("/v1/models", lambda r: models("m1")).on("/v1/chat/completions", lambda r: completion())
        for _ in range(2)
    ]
    async with running(*replicas), gateway({"inference-gguf": [r.url for r in replicas]}) as client:
        for _ in range(4):
            await client.post("/v1/chat/completions", content=chat())
    assert [len(r.chat_requests()) for r in replicas] == [2, 2]


async def test_ready_reports_unreachable_services() -> None:
    url = dead_url()
    async with gateway({"inference-gguf": [url]}) as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    assert f"inference-gguf at {url}" in response.json()["error"]["message"]


async def test_upstream_errors_pass_through_with_their_headers() -> None:
    busy = Reply(
        429,
        {"error": {"message": "busy", "type": "rate_limit_error", "param": None, "code": "queue_full"}},
        headers={"Retry-After": "4"},
    )
    gguf = Replica().on("/v1/models", lambda r: models("m1")).on("/v1/chat/completions", lambda r: busy)
    async with running(gguf), gateway({"inference-gguf": [gguf.url]}) as client:
        response = await client.post("/v1/chat/completions", content=chat())
        streamed = await client.post("/v1/chat/completions", content=chat(stream=True))
    for answer in (response, streamed):
        assert answer.status_code == 429
        assert answer.headers["retry-after"] == "4"
        assert answer.json()["error"]["code"] == "queue_full"


async def _until(
    done: Callable[[httpx.Response], bool], attempt: Callable[[], Awaitable[httpx.Response]], timeout_s: float = 10
) -> httpx.Response:
    """Repeat ``attempt`` until its response is ``done``; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not done(response := await attempt()):
        assert time.monotonic() < deadline, f"still {response.status_code} {response.text} after {timeout_s:g}s"
        await asyncio.sleep(0.05)
    return response
