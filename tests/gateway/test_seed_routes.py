"""The seed systems' routes beyond the conversation basics (tests/gateway/test_sessions.py): FineTuneLLM's
``/chat`` sends that backend's sampling and stores the prompt when it arrives, the IT-support route answers
both spellings, and ``/docs`` works offline. Scripted model replicas; the real history service."""

from __future__ import annotations

import asyncio
import re
import time

import httpx
import orjson
import pytest

from gateway.config import FinetuneSampling, Settings
from tests.gateway.fakes import Reply, Seen, chunk, gateway, model_replica, running, sse
from tests.services import Service

SEED_003 = {
    "max_tokens": 150,
    "temperature": 0.5,
    "top_p": 0.9,
    "top_k": 40,
    "repeat_penalty": 1.1,
    "stop": ["</s>", "User:", "\nUser:", "Human:", "\nHuman:", "Question:", "\nQuestion:", "\n\n\n", "Example:",
             "Here's an", "Let me"],
}  # fmt: skip
STREAM = [chunk("Bon"), chunk("jour", "stop"), b"data: [DONE]\n\n"]


async def test_chat_sends_the_finetune_backends_sampling(history: Service) -> None:
    replica = model_replica().on("/v1/chat/completions", lambda r: sse(STREAM))
    async with (
        running(replica),
        gateway({"inference-gguf": [replica.url]}, history_url=history.url, finetune_model="m1") as client,
    ):
        response = await client.post("/chat", json={"prompt": "Hello", "session_id": "s-sampling"})
    assert response.status_code == 200
    sent = orjson.loads(replica.chat_requests()[0].body)
    assert {k: sent[k] for k in SEED_003} == SEED_003
    assert sent["model"] == "m1" and sent["stream"] is True and "session_id" not in sent


def test_the_sampling_setting_keeps_unnamed_fields_and_leaves_null_ones_to_the_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GATEWAY_FINETUNE_SAMPLING", '{"max_tokens": 60, "temperature": null}')
    sampling = Settings().finetune_sampling
    without_temperature = {k: v for k, v in SEED_003.items() if k != "temperature"}
    assert sampling.model_dump(exclude_none=True) == {**without_temperature, "max_tokens": 60}
    assert FinetuneSampling().model_dump(exclude_none=True) == SEED_003  # no seed by default


async def test_the_prompt_is_stored_when_it_arrives_not_with_the_answer(history: Service) -> None:
    """The model replica answers only once the history service holds the prompt: a gateway that stored the
    prompt with the answer would keep it waiting (and fail here)."""

    async def answer_once_the_prompt_is_stored(seen: Seen) -> Reply:
        async with httpx.AsyncClient(base_url=history.url) as http:
            deadline = time.monotonic() + 10
            while not (await http.get("/v1/sessions/s-arrival/messages")).json()["messages"]:
                assert time.monotonic() < deadline, "the prompt was not stored while the model worked"
                await asyncio.sleep(0.02)
        return sse(STREAM)

    replica = model_replica().on("/v1/chat/completions", answer_once_the_prompt_is_stored)
    async with (
        running(replica),
        gateway({"inference-gguf": [replica.url]}, history_url=history.url, finetune_model="m1") as client,
    ):
        response = await client.post("/chat", json={"prompt": "Hello", "session_id": "s-arrival"})
        listed = (await client.get("/messages", params={"session_id": "s-arrival"})).json()["messages"]
    assert response.text == 'data: {"token":"Bon"}\n\ndata: {"token":"jour"}\n\ndata: [DONE]\n\n'
    assert [(m["role"], m["content"], m["status"]) for m in listed] == [
        ("user", "Hello", "complete"),
        ("assistant", "Bonjour", "complete"),
    ]
    assert listed[0]["timestamp"] < listed[1]["timestamp"]  # the answer was stored after the model answered


async def test_the_it_support_route_answers_both_spellings() -> None:
    replica = model_replica()
    async with running(replica), gateway({"inference-gguf": [replica.url]}, retriever_url="") as client:
        slashed = await client.post("/api/v1/chat/", json={"query": "vpn"})
        bare = await client.post("/api/v1/chat", json={"query": "vpn"})
        invalid = await client.post("/api/v1/chat", json={"query": ""})
    assert slashed.status_code == bare.status_code == 503  # no retriever here: the route itself answered
    assert bare.json()["detail"] == slashed.json()["detail"] == "No retriever is configured (GATEWAY_RETRIEVER_URL)."
    assert invalid.status_code == 400 and invalid.json()["error"] == "Validation Error"


async def test_docs_load_their_scripts_from_the_gateway() -> None:
    replica = model_replica()
    async with running(replica), gateway({"inference-gguf": [replica.url]}) as client:
        docs = await client.get("/docs")
        redoc = await client.get("/redoc")
        scripts = [await client.get(path) for page in (docs.text, redoc.text) for path in _asset_paths(page)]
        schema = await client.get("/openapi.json")
    assert docs.status_code == redoc.status_code == 200
    assert "cdn" not in docs.text and "cdn" not in redoc.text
    assert len(scripts) >= 3 and all(s.status_code == 200 and len(s.content) > 1000 for s in scripts)
    assert schema.status_code == 200 and "/v1/models" in schema.json()["paths"]


def _asset_paths(page: str) -> list[str]:
    """The paths of the page's script and stylesheet links."""
    return re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", page)
