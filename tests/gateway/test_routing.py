from __future__ import annotations

import httpx2 as httpx

from tests.gateway.fakes import Upstream, chat, completion, gateway, models

GGUF = "http://gguf:8001"
GGUF2 = "http://gguf-2:8001"
HF = "http://hf:8002"


async def test_models_are_discovered_from_every_service() -> None:
    upstream = Upstream()
    upstream.on(f"{GGUF}/v1/models", lambda r: models("a", "b"))
    upstream.on(f"{HF}/v1/models", lambda r: models("c", owner="inference-hf"))
    async with gateway(upstream, {"inference-gguf": [GGUF], "inference-hf": [HF]}) as client:
        listed = (await client.get("/v1/models")).json()
    assert [(m["id"], m["owned_by"]) for m in listed["data"]] == [
        ("a", "inference-gguf"), ("b", "inference-gguf"), ("c", "inference-hf")]


async def test_each_model_goes_to_the_service_that_owns_it() -> None:
    upstream = Upstream()
    upstream.on(f"{GGUF}/v1/models", lambda r: models("a"))
    upstream.on(f"{HF}/v1/models", lambda r: models("c"))
    upstream.on(f"{GGUF}/v1/chat/completions", lambda r: completion("from gguf"))
    upstream.on(f"{HF}/v1/chat/completions", lambda r: completion("from hf"))
    async with gateway(upstream, {"inference-gguf": [GGUF], "inference-hf": [HF]}) as client:
        a = await client.post("/v1/chat/completions", content=chat("a"))
        c = await client.post("/v1/chat/completions", content=chat("c"))
    assert a.json()["choices"][0]["message"]["content"] == "from gguf"
    assert c.json()["choices"][0]["message"]["content"] == "from hf"


async def test_body_and_request_id_reach_the_upstream_unchanged() -> None:
    upstream = Upstream()
    upstream.on(f"{GGUF}/v1/models", lambda r: models("m1"))
    upstream.on(f"{GGUF}/v1/chat/completions", lambda r: completion())
    body = chat(temperature=0, some_new_field={"x": 1})
    async with gateway(upstream, {"inference-gguf": [GGUF]}) as client:
        response = await client.post("/v1/chat/completions", content=body, headers={"X-Request-ID": "trace-7"})
    sent = upstream.chat_requests()[0]
    assert sent.content == body
    assert sent.headers["x-request-id"] == "trace-7"
    assert response.headers["x-request-id"] == "trace-7"


async def test_a_new_model_is_found_without_waiting_for_the_refresh() -> None:
    upstream = Upstream()
    served = ["m1"]
    upstream.on(f"{GGUF}/v1/models", lambda r: models(*served))
    upstream.on(f"{GGUF}/v1/chat/completions", lambda r: completion())
    async with gateway(upstream, {"inference-gguf": [GGUF]}, refresh_interval_s=3600) as client:
        served.append("m2")
        import asyncio

        await asyncio.sleep(1.05)  # the on-demand re-read is rate-limited to once a second
        response = await client.post("/v1/chat/completions", content=chat("m2"))
    assert response.status_code == 200


async def test_a_refused_replica_is_skipped_and_the_next_one_answers() -> None:
    upstream = Upstream()
    upstream.on(f"{GGUF}/v1/models", lambda r: models("m1"))
    upstream.on(f"{GGUF2}/v1/models", lambda r: models("m1"))
    upstream.on(f"{GGUF2}/v1/chat/completions", lambda r: completion("second"))  # the first refuses chats
    async with gateway(upstream, {"inference-gguf": [GGUF, GGUF2]}) as client:
        answers = [(await client.post("/v1/chat/completions", content=chat())) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len([r for r in upstream.chat_requests() if r.url.host == "gguf"]) <= 1  # then routed around


async def test_requests_spread_over_replicas() -> None:
    upstream = Upstream()
    for url in (GGUF, GGUF2):
        upstream.on(f"{url}/v1/models", lambda r: models("m1"))
        upstream.on(f"{url}/v1/chat/completions", lambda r: completion())
    async with gateway(upstream, {"inference-gguf": [GGUF, GGUF2]}) as client:
        for _ in range(4):
            await client.post("/v1/chat/completions", content=chat())
    hosts = [r.url.host for r in upstream.chat_requests()]
    assert hosts.count("gguf") == 2 and hosts.count("gguf-2") == 2


async def test_ready_reports_unreachable_services() -> None:
    upstream = Upstream()  # nothing answers
    async with gateway(upstream, {"inference-gguf": [GGUF]}) as client:
        response = await client.get("/ready")
    assert response.status_code == 503
    assert "inference-gguf at http://gguf:8001" in response.json()["error"]["message"]


async def test_upstream_errors_pass_through_with_their_headers() -> None:
    upstream = Upstream()
    upstream.on(f"{GGUF}/v1/models", lambda r: models("m1"))
    upstream.on(f"{GGUF}/v1/chat/completions", lambda r: httpx.Response(
        429, headers={"Retry-After": "4"}, json={"error": {"message": "busy", "type": "rate_limit_error",
                                                            "param": None, "code": "queue_full"}}))
    async with gateway(upstream, {"inference-gguf": [GGUF]}) as client:
        response = await client.post("/v1/chat/completions", content=chat())
    assert response.status_code == 429
    assert response.headers["retry-after"] == "4"
    assert response.json()["error"]["code"] == "queue_full"
