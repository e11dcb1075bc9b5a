"""Profiles through the real gateway app in front of scripted model services (tests/gateway/fakes.py):
virtual model ids, selection by field and header, the reasoning split and guardrails on both answer
kinds through the official openai SDK, and the two seed routes (000 Cern, 001 ChatQnA).

The fake upstream splits its stream deliberately (tags and banned phrases cut at chosen positions);
tests/integration/test_profiles_real.py runs the same routes on the real bundled model."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.fakes import Replica, Reply, Seen, completion, gateway, models, running, sse

PROFILES = """
profiles:
  - id: thinker
    model: m1
    system_prompt: You are Cern.
    knowledge_file: kb.md
    sampling: {temperature: 0.1}
    reasoning: {open: "<think>", close: "</think>"}
    guardrails: {banned: ["language model"], fallback: "Let me check with the team."}
  - id: cern
    model: m1
    reasoning: {}
    guardrails: {banned: ["chatgpt"], fallback: "I am Cern."}
  - id: chatqna
    model: m1
    system_prompt: Be brief.
"""

THOUGHT = "<think>User wants the battery. Sheet says 32.</think>\n\nThe Drift lasts 32 hours."


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    payload = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m1",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def streamed(text: str, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(text)]
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": text[a:b]}) for a, b in itertools.pairwise(bounds)]
    return [*events, chunk({}, "stop"), b"data: [DONE]\n\n"]


class Upstream:
    """A replica serving m1 whose chat answer is ``text``, streamed in the pieces ``cuts`` give."""

    def __init__(self) -> None:
        self.text = THOUGHT
        self.cuts: list[int] = []
        self.replica = Replica().on("/v1/models", lambda _: models("m1")).on("/v1/chat/completions", self.answer)

    def answer(self, seen: Seen) -> Reply:
        body = orjson.loads(seen.body)
        if body.get("stream"):
            return sse(streamed(self.text, self.cuts))
        return completion(self.text)

    def last_body(self) -> dict[str, Any]:
        return dict(orjson.loads(self.replica.chat_requests()[-1].body))


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[Upstream, httpx.AsyncClient]]:
    (tmp_path / "kb.md").write_text("The Lumen Drift battery lasts 32 hours.")
    (tmp_path / "profiles.yaml").write_text(PROFILES)
    upstream = Upstream()
    async with (
        running(upstream.replica),
        gateway({"inference-gguf": [upstream.replica.url]}, profiles_file=tmp_path / "profiles.yaml") as client,
    ):
        yield upstream, client


def sdk(client: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url="http://gateway/v1", api_key="x", http_client=client, max_retries=0)


async def test_profiles_are_virtual_models(setup: tuple[Upstream, httpx.AsyncClient]) -> None:
    _, client = setup
    ids = [m.id for m in (await sdk(client).models.list()).data]
    assert ids == ["m1", "cern", "chatqna", "thinker"]


async def test_profile_as_model_id_non_stream(setup: tuple[Upstream, httpx.AsyncClient]) -> None:
    upstream, client = setup
    answer = await sdk(client).chat.completions.create(
        model="thinker", messages=[{"role": "user", "content": "Battery?"}]
    )
    message = answer.choices[0].message
    assert message.content == "The Drift lasts 32 hours."
    assert (message.model_extra or {})["reasoning_content"] == "User wants the battery. Sheet says 32."
    assert answer.model == "thinker"
    sent = upstream.last_body()
    assert sent["model"] == "m1" and sent["temperature"] == 0.1
    assert sent["messages"][0] == {
        "role": "system",
        "content": "You are Cern.\n\nThe Lumen Drift battery lasts 32 hours.",
    }


@pytest.mark.parametrize("cuts", [[], [3], [7], [8], [40], [45], [47], [48], [50], list(range(1, len(THOUGHT)))])
async def test_profile_stream_reasoning_then_content(
    setup: tuple[Upstream, httpx.AsyncClient], cuts: list[int]
) -> None:
    upstream, client = setup
    upstream.cuts = cuts
    stream = await sdk(client).chat.completions.create(
        model="thinker", messages=[{"role": "user", "content": "Battery?"}], stream=True
    )
    kinds, reasoning, content = [], [], []
    async for part in stream:
        assert part.model == "thinker"
        if not part.choices:
            continue
        delta = part.choices[0].delta
        extra = (delta.model_extra or {}).get("reasoning_content")
        if extra:
            kinds.append("r")
            reasoning.append(extra)
        if delta.content:
            kinds.append("c")
            content.append(delta.content)
    assert "".join(reasoning) == "User wants the battery. Sheet says 32."
    assert "".join(content) == "The Drift lasts 32 hours."
    assert kinds == sorted(kinds, reverse=True)  # every reasoning chunk before the first content chunk


async def test_profile_by_field_and_header(setup: tuple[Upstream, httpx.AsyncClient]) -> None:
    upstream, client = setup
    body = {"model": "m1", "profile": "thinker", "messages": [{"role": "user", "content": "hi"}]}
    r = await client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "The Drift lasts 32 hours."
    assert "profile" not in upstream.last_body()
    body.pop("profile")
    r = await client.post("/v1/chat/completions", json=body, headers={"X-Switchboard-Profile": "thinker"})
    assert r.json()["choices"][0]["message"]["reasoning_content"].startswith("User wants")
    r = await client.post("/v1/chat/completions", json=body)  # no profile: the model's answer untouched
    assert r.json()["choices"][0]["message"]["content"] == THOUGHT


@pytest.mark.parametrize("how", ["field", "header"])
async def test_unknown_profile_is_404_and_reaches_no_model(setup: tuple[Upstream, httpx.AsyncClient], how: str) -> None:
    upstream, client = setup
    body: dict[str, Any] = {"model": "m1", "messages": [{"role": "user", "content": "hi"}]}
    headers = {}
    if how == "field":
        body["profile"] = "nobody"
    else:
        headers["X-Switchboard-Profile"] = "nobody"
    r = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 404
    error = r.json()["error"]
    assert error["code"] == "profile_not_found" and "thinker" in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert upstream.replica.chat_requests() == []


def _decisions(text: str, decision: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_guardrail_decisions_total" and s.labels == {
                "profile": "thinker",
                "decision": decision,
            }:
                return s.value
    return 0.0


BANNED = "Sure. As a language model I think the Drift lasts long."


@pytest.mark.parametrize("cuts", [[], [12], [20], [25], [33], list(range(1, len(BANNED)))])
async def test_stream_never_leaks_a_banned_phrase(setup: tuple[Upstream, httpx.AsyncClient], cuts: list[int]) -> None:
    upstream, client = setup
    upstream.text, upstream.cuts = BANNED, cuts
    stream = await sdk(client).chat.completions.create(
        model="thinker", messages=[{"role": "user", "content": "?"}], stream=True
    )
    content, finish = [], None
    async for part in stream:
        if part.choices:
            content.append(part.choices[0].delta.content or "")
            finish = part.choices[0].finish_reason or finish
    text = "".join(content)
    assert "language model" not in text.lower()
    assert text.endswith("Let me check with the team.") and finish == "content_filter"
    assert _decisions((await client.get("/metrics")).text, "blocked") == 1


async def test_whole_answer_with_banned_phrase_is_replaced(setup: tuple[Upstream, httpx.AsyncClient]) -> None:
    upstream, client = setup
    upstream.text = "<think>I am a LANGUAGE   model</think>Hello"
    r = await client.post(
        "/v1/chat/completions", json={"model": "thinker", "messages": [{"role": "user", "content": "?"}]}
    )
    choice = r.json()["choices"][0]
    # Three spaces do not match the one-space phrase; the reasoning holds no banned phrase then.
    assert choice["message"]["content"] == "Hello"
    upstream.text = "<think>I am a Language model</think>Hello"
    r = await client.post(
        "/v1/chat/completions", json={"model": "thinker", "messages": [{"role": "user", "content": "?"}]}
    )
    choice = r.json()["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Let me check with the team."}
    assert choice["finish_reason"] == "content_filter"
    metrics = (await client.get("/metrics")).text
    assert _decisions(metrics, "blocked") == 1 and _decisions(metrics, "passed") == 1


async def test_cern_route(setup: tuple[Upstream, httpx.AsyncClient]) -> None:
    upstream, client = setup
    body = {
        "history": [{"role": "user", "content": "Hello, who are you?"}, {"role": "cern", "content": "I'm Cern."}],
        "user_prompt": "What's the battery life?",
    }
    r = await client.post("/api/chat", json=body)
    assert r.status_code == 200
    assert r.json() == {
        "cern_response": "The Drift lasts 32 hours.",
        "thought_process": "User wants the battery. Sheet says 32.",
    }
    sent = upstream.last_body()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]  # profile 'cern' has no system prompt
    assert sent[1]["content"] == "I'm Cern." and sent[2]["content"] == "What's the battery life?"
    upstream.text = "I'm just ChatGPT."
    r = await client.post("/api/chat", json=body)
    assert r.json() == {"cern_response": "I am Cern.", "thought_process": ""}


async def test_cern_route_bad_input(setup: tuple[Upstream, httpx.AsyncClient]) -> None:
    upstream, client = setup
    r = await client.post("/api/chat", json={"history": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "user_prompt"
    r = await client.post("/api/chat", content=b"{")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert upstream.replica.chat_requests() == []


async def test_chatqna_route(setup: tuple[Upstream, httpx.AsyncClient]) -> None:
    upstream, client = setup
    upstream.text = "Fine, thanks."
    body = {
        "messages": [{"role": "user", "content": "Hello, how are you?"}],
        "stream": False,
        "context": ["The shop opens at 9:00.", {"title": "Hours", "text": "Closed on Sundays."}],
        "meta": {"auth_token": ""},
    }
    r = await client.post("/v1/chatqna", json=body)
    assert r.status_code == 200
    answer = r.json()
    assert answer["model"] == "chatqna" and answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Fine, thanks."}
    assert set(answer["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    sent = upstream.last_body()
    assert "context" not in sent and "meta" not in sent and sent["model"] == "m1"
    system = sent["messages"][0]["content"]
    assert system.startswith("Be brief.") and "[1] The shop opens at 9:00." in system and "[2] Hours\nClosed" in system
    r = await client.post("/v1/chatqna", json={**body, "stream": True})
    events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {"chatqna"}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Fine, thanks."


async def test_chatqna_bad_context_and_health(setup: tuple[Upstream, httpx.AsyncClient]) -> None:
    upstream, client = setup
    r = await client.post("/v1/chatqna", json={"messages": [{"role": "user", "content": "x"}], "context": [3]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "context.0"
    r = await client.post("/v1/chatqna", json={"messages": []})
    assert r.status_code == 400
    assert upstream.replica.chat_requests() == []
    assert (await client.get("/health")).json() == {"status": "ok"}
