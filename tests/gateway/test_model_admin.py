"""Loading and unloading models through the gateway (unified routes and the AlterEgo backend's, seed 004),
against scripted replicas that record what they were asked."""

from __future__ import annotations

from tests.gateway.fakes import Replica, Reply, chat, completion, dead_url, gateway, models, running


def _hf(*ids: str) -> Replica:
    replica = Replica().on("/v1/models", lambda r: models(*ids, owner="inference-hf"))
    for model in ids:
        for action in ("load", "unload"):
            replica.on(
                f"/v1/models/{model}/{action}",
                lambda r, a=action: Reply(payload={"id": r.path.split("/")[3], "state": {"loaded": a == "load"}}),
            )
    return replica


async def test_load_and_unload_reach_every_replica_of_the_owning_service() -> None:
    one, two, other = _hf("org/chat-small"), _hf("org/chat-small"), _hf("elsewhere")
    async with (
        running(one, two, other),
        gateway({"inference-hf": [one.url, two.url], "inference-other": [other.url]}) as client,
    ):
        loaded = await client.post("/v1/models/org/chat-small/load")
        unloaded = await client.delete("/models/org/chat-small/unload")  # the AlterEgo route
        seed_load = await client.post("/models/org/chat-small/load")
    assert loaded.status_code == unloaded.status_code == seed_load.status_code == 200
    assert loaded.json()["action"] == "load" and len(loaded.json()["replicas"]) == 2
    assert loaded.json()["replicas"][0]["state"] == {"loaded": True}
    assert unloaded.json()["replicas"][1]["state"] == {"loaded": False}
    for replica in (one, two):
        calls = [(s.method, s.path) for s in replica.seen if "/load" in s.path or "/unload" in s.path]
        assert calls == [
            ("POST", "/v1/models/org/chat-small/load"),
            ("POST", "/v1/models/org/chat-small/unload"),
            ("POST", "/v1/models/org/chat-small/load"),
        ]
    assert not [s for s in other.seen if "load" in s.path]


async def test_the_alterego_model_list_is_the_unified_one() -> None:
    replica = _hf("a", "b")
    async with running(replica), gateway({"inference-hf": [replica.url]}) as client:
        seed = (await client.get("/models")).json()
        unified = (await client.get("/v1/models")).json()
    assert seed == unified and [m["id"] for m in seed["data"]] == ["a", "b"]


async def test_unknown_model_is_404_and_a_service_without_the_operation_is_400() -> None:
    gguf = Replica().on("/v1/models", lambda r: models("gguf-model"))
    async with running(gguf), gateway({"inference-gguf": [gguf.url]}) as client:
        unknown = await client.post("/v1/models/nope/load")
        unsupported = await client.delete("/models/gguf-model/unload")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert unsupported.status_code == 400
    assert unsupported.json()["error"]["code"] == "unsupported_operation"
    assert "keeps its models loaded" in unsupported.json()["error"]["message"]


async def test_a_replica_refusing_or_failing_is_passed_on() -> None:
    busy = (
        Replica()
        .on("/v1/models", lambda r: models("m", owner="inference-hf"))
        .on(
            "/v1/models/m/unload",
            lambda r: Reply(
                status=409,
                payload={
                    "error": {
                        "message": "m has 2 requests running",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "model_busy",
                    }
                },
            ),
        )
    )
    async with running(busy), gateway({"inference-hf": [busy.url]}) as client:
        refused = await client.post("/v1/models/m/unload")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "model_busy"
    assert "2 requests running" in refused.json()["error"]["message"]
    async with running(busy), gateway({"inference-hf": [busy.url, dead_url()]}) as client:
        await client.get("/v1/models")
        loaded = await client.post("/v1/models/m/unload")
    assert loaded.status_code == 409  # the dead replica is not routed to; the live one answered


async def test_the_alterego_chat_route_is_the_openai_one() -> None:
    replica = _hf("m").on("/v1/chat/completions", lambda r: completion("hi there"))
    async with running(replica), gateway({"inference-hf": [replica.url]}) as client:
        response = await client.post("/chat/completions", content=chat("m", max_tokens=5))
        wrong = await client.get("/chat/completions")
    assert response.status_code == 200 and response.json()["choices"][0]["message"]["content"] == "hi there"
    assert replica.chat_requests()[0].body == chat("m", max_tokens=5)  # forwarded unchanged
    assert wrong.status_code == 405
