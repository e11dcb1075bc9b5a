"""Affinity with two real inference-gguf replicas (``python -m inference_gguf`` on the bundled model, 2 slots each),
the real history service and the real gateway: a session's second turn goes to the replica that answered its first,
and that replica's prompt cache holds the first turn's prompt, so only the new tokens are evaluated (the engine's
``inference_gguf_prompt_tokens_reused`` counter)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.gateway.fakes import gateway
from tests.services import Service, free_port, start_service

pytestmark = pytest.mark.integration
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Service]]:
    logs = tmp_path_factory.mktemp("gguf-replicas")
    started: list[Service] = []
    try:
        for _ in range(2):
            port = free_port()
            env = {
                "INFERENCE_GGUF_PORT": str(port),
                "INFERENCE_GGUF_MODELS_DIR": str(Path(logs) / "no-models"),
                "INFERENCE_GGUF_N_CTX": "2048",
                "INFERENCE_GGUF_N_SLOTS": "2",
                "INFERENCE_GGUF_N_THREADS": "1",
            }
            started.append(start_service("inference-gguf", ["-m", "inference_gguf"], env, port, Path(logs)))
        yield started
    finally:
        for service in started:
            service.stop()


def _counter(service: Service, name: str) -> float:
    text = httpx.get(service.url + "/metrics").text
    return sum(float(v) for v in re.findall(rf"^{name}_total\{{[^}}]*\}} (\S+)$", text, re.M))


def _turn(question: str) -> bytes:
    return orjson.dumps(
        {
            "model": MODEL,
            "session_id": "gguf-affinity",
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 8,
            "temperature": 0,
        }
    )


async def test_the_second_turn_reuses_the_first_turns_prompt_cache_on_the_same_replica(
    replicas: list[Service], history: Service
) -> None:
    reused = "inference_gguf_prompt_tokens_reused"
    evaluated = "inference_gguf_prompt_tokens_evaluated"
    async with gateway(
        {"inference-gguf": [r.url for r in replicas]}, history_url=history.url, read_timeout_s=120
    ) as client:
        before = {r.url: (_counter(r, reused), _counter(r, evaluated)) for r in replicas}
        first = await client.post("/v1/chat/completions", content=_turn("Name a colour of the sky."))
        assert first.status_code == 200, first.text
        after_first = {r.url: (_counter(r, reused), _counter(r, evaluated)) for r in replicas}
        second = await client.post("/v1/chat/completions", content=_turn("And at night?"))
        assert second.status_code == 200, second.text
        after_second = {r.url: (_counter(r, reused), _counter(r, evaluated)) for r in replicas}
        metrics = (await client.get("/metrics")).text

    home = next(r.url for r in replicas if after_first[r.url][1] > before[r.url][1])
    other = next(r.url for r in replicas if r.url != home)
    first_prompt = first.json()["usage"]["prompt_tokens"]
    second_prompt = second.json()["usage"]["prompt_tokens"]
    reused_second = after_second[home][0] - after_first[home][0]
    evaluated_second = after_second[home][1] - after_first[home][1]
    # The second turn's prompt starts with the first turn's whole prompt: that part came from the cache.
    assert second_prompt > first_prompt
    assert reused_second >= first_prompt - 1, (reused_second, first_prompt)
    assert evaluated_second <= second_prompt - first_prompt + 1
    assert after_second[other] == before[other]  # the other replica saw neither turn
    assert f'gateway_affinity_total{{model="{MODEL}",result="hit"}} 2.0' in metrics
