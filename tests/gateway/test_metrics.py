"""The gateway's metrics: the model label is bounded whatever clients send, and the per-model latency,
time-to-first-token and token series count what happened. Scripted replicas, the real gateway app."""

from __future__ import annotations

import random
import string

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.fakes import Replica, Reply, chat, chunk, completion, gateway, models, running, sse

USAGE = (
    b"data: "
    + orjson.dumps(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "choices": [],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3},
        }
    )
    + b"\n\n"
)
ROLE = (
    b"data: "
    + orjson.dumps(
        {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
    )
    + b"\n\n"
)
STREAM = [ROLE, chunk("Hel"), chunk("lo"), chunk(finish="stop"), USAGE, b"data: [DONE]\n\n"]


def _replica() -> Replica:
    def answer(seen: object) -> Reply:
        return sse(STREAM) if orjson.loads(seen.body).get("stream") else completion("hi")  # type: ignore[attr-defined]

    return Replica().on("/v1/models", lambda r: models("m1")).on("/v1/chat/completions", answer)


async def _series(client: httpx.AsyncClient) -> dict[str, float]:
    """Every gateway_* sample of /metrics, keyed by name and labels."""
    text = (await client.get("/metrics")).text
    return {
        f"{s.name}{sorted(s.labels.items())}": s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name.startswith("gateway_")
    }


def _random_model() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits + "-", k=24))


async def test_a_thousand_unknown_model_names_leave_the_series_count_bounded() -> None:
    replica = _replica()
    async with running(replica), gateway({"inference-gguf": [replica.url]}) as client:
        assert (await client.post("/v1/chat/completions", content=chat("m1"))).status_code == 200
        for _ in range(10):
            assert (await client.post("/v1/chat/completions", content=chat(_random_model()))).status_code == 404
        few = await _series(client)
        for _ in range(990):
            await client.post("/v1/chat/completions", content=chat(_random_model()))
        many = await _series(client)
    assert sorted(many) == sorted(few)  # no new series at all
    labels = {key.split("('model', '")[1].split("'")[0] for key in many if "('model', '" in key}
    assert labels == {"m1", "other"}
    assert many["gateway_chat_requests_total[('model', 'other'), ('status', '404')]"] == 1000


async def test_latency_time_to_first_token_and_tokens_per_model() -> None:
    replica = _replica()
    async with running(replica), gateway({"inference-gguf": [replica.url]}) as client:
        whole = await client.post("/v1/chat/completions", content=chat("m1"))
        streamed = await client.post("/v1/chat/completions", content=chat("m1", stream=True))
        series = await _series(client)
    assert whole.status_code == streamed.status_code == 200
    assert streamed.content == b"".join(STREAM)  # measuring changed nothing on the wire
    m1 = "[('model', 'm1')]"
    assert series[f"gateway_chat_request_duration_seconds_count{m1}"] == 2
    assert series[f"gateway_chat_request_duration_seconds_sum{m1}"] > 0
    assert series[f"gateway_chat_time_to_first_token_seconds_count{m1}"] == 1  # streamed answers only
    # usage: the non-streamed fake answer reports 1 + 1, the stream's usage chunk 7 + 3
    assert series[f"gateway_prompt_tokens_total{m1}"] == 8
    assert series[f"gateway_completion_tokens_total{m1}"] == 4
