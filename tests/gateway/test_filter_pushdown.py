"""A profile's answer filter pushed down to the model service (chat_common.answer_filter), through the real
gateway app in front of scripted replicas: the extension sent only to a model whose card advertises it, a
client's own extension never trusted, the replica's filtered answer relayed byte for byte, and the
gateway's own filter for an answer that does not say it was filtered (so a banned phrase never gets
through, whoever filters). The replicas that filter use the services' code (``StreamShaper``);
tests/integration/test_profiles_real.py runs the path on the real bundled model."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from chat_common.answer_filter import FILTER_FIELD, FILTER_HEADER, FILTER_VERSION, FilterSpec, StreamShaper
from tests.gateway.fakes import Replica, Reply, Seen, gateway, running

PROFILES = """
profiles:
  - id: thinker
    model: m1
    reasoning: {}
    guardrails: {banned: ["language model"], fallback: "Let me check with the team."}
  - id: plain-thinker
    model: legacy
    reasoning: {}
    guardrails: {banned: ["language model"], fallback: "Let me check with the team."}
"""
THOUGHT = "<think>Sheet says 32.</think>\n\nThe Drift lasts 32 hours."
BANNED = "<think>Fine.</think>I am a language model, sadly."
SPEC = {
    "answer_model": "thinker",
    "reasoning_tags": ["<think>", "</think>"],
    "banned": ["language model"],
    "fallback": "Let me check with the team.",
}


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    payload = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model, "choices": [choice]}
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def whole(model: str, message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12},
    }


class Service:
    """A replica of model ``model`` answering ``text`` in pieces cut at ``cuts``. ``capable``: its card
    advertises the extension; ``applies``: it filters a request's extension as the model services do
    (with their code) and says so in the header."""

    def __init__(self, model: str, *, capable: bool, applies: bool) -> None:
        self.model, self.applies = model, applies
        self.text = THOUGHT
        self.cuts: list[int] = [5, 9, 20, 31]
        self.sent: list[bytes] = []
        card: dict[str, Any] = {"id": model, "object": "model", "created": 0, "owned_by": "inference-gguf"}
        if capable:
            card[FILTER_FIELD] = FILTER_VERSION
        self.replica = (
            Replica()
            .on("/v1/models", lambda _: Reply(payload={"object": "list", "data": [card]}))
            .on("/v1/chat/completions", self.answer)
        )

    def pieces(self) -> list[str]:
        bounds = [0, *[c for c in self.cuts if c < len(self.text)], len(self.text)]
        return [self.text[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    def answer(self, seen: Seen) -> Reply:
        body = orjson.loads(seen.body)
        raw = body.get(FILTER_FIELD) if self.applies else None
        spec = FilterSpec.model_validate(raw) if raw is not None else None
        name = (spec.answer_model if spec else None) or self.model
        headers = {FILTER_HEADER: "1"} if spec is not None else {}
        if not body.get("stream"):
            payload = whole(self.model, {"content": self.text})
            if spec is not None:
                payload = StreamShaper.completion(spec, payload)
            return Reply(payload=payload, headers=headers)
        if spec is None:
            events = [chunk(name, {"role": "assistant", "content": ""})]
            events += [chunk(name, {"content": piece}) for piece in self.pieces()]
            events.append(chunk(name, {}, "stop"))
        else:
            shaper = StreamShaper(spec)
            events = [chunk(name, shaper.role)]
            for piece in self.pieces():
                events += [chunk(name, delta, finish) for delta, finish in shaper.feed(piece)]
                if shaper.blocked:
                    break
            else:
                events += [chunk(name, delta, finish) for delta, finish in shaper.finish()]
                events.append(chunk(name, {}, "stop"))
        self.sent = [*events, b"data: [DONE]\n\n"]
        return Reply(events=self.sent, headers=headers)

    def last_body(self) -> dict[str, Any]:
        return dict(orjson.loads(self.replica.chat_requests()[-1].body))


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[tuple[Service, Service, httpx.AsyncClient]]:
    """'m1' on a replica that applies the filter, 'legacy' on one that does not know it."""
    (tmp_path / "profiles.yaml").write_text(PROFILES)
    capable = Service("m1", capable=True, applies=True)
    legacy = Service("legacy", capable=False, applies=False)
    async with (
        running(capable.replica, legacy.replica),
        gateway(
            {"inference-gguf": [capable.replica.url], "inference-old": [legacy.replica.url]},
            profiles_file=tmp_path / "profiles.yaml",
        ) as client,
    ):
        yield capable, legacy, client


def ask(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Battery?"}], **extra}


async def streamed(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[bytes, list[dict[str, Any]]]:
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        assert r.status_code == 200
        assert FILTER_HEADER not in r.headers
        raw = b"".join([piece async for piece in r.aiter_bytes()])
    events = [line[6:] for line in raw.split(b"\n\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    return raw, [orjson.loads(e) for e in events[:-1]]


def texts(chunks: list[dict[str, Any]], field: str) -> str:
    return "".join(c["choices"][0]["delta"].get(field) or "" for c in chunks if c.get("choices"))


def counter(text: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def test_the_filter_goes_to_a_capable_model_and_its_stream_is_relayed_unchanged(
    services: tuple[Service, Service, httpx.AsyncClient],
) -> None:
    capable, _, client = services
    # A client's own extension is not the profile's guardrail: the gateway replaces it.
    raw, chunks = await streamed(client, ask("thinker", **{FILTER_FIELD: {"banned": []}}))
    assert capable.last_body()[FILTER_FIELD] == SPEC
    assert raw == b"".join(capable.sent)  # byte for byte what the service sent
    assert texts(chunks, "reasoning_content") == "Sheet says 32."
    assert texts(chunks, "content") == "The Drift lasts 32 hours."
    assert {c["model"] for c in chunks} == {"thinker"}
    metrics = (await client.get("/metrics")).text
    assert counter(metrics, "gateway_profile_filters_total", by="service") == 1
    assert counter(metrics, "gateway_guardrail_decisions_total", profile="thinker", decision="passed") == 1


async def test_a_model_that_does_not_advertise_it_gets_no_extension(
    services: tuple[Service, Service, httpx.AsyncClient],
) -> None:
    _, legacy, client = services
    legacy.applies = True  # it would apply one, but is not asked to (and a client's own is dropped)
    _, chunks = await streamed(client, ask("plain-thinker", **{FILTER_FIELD: {"banned": []}}))
    assert FILTER_FIELD not in legacy.last_body()
    assert texts(chunks, "reasoning_content") == "Sheet says 32."
    assert texts(chunks, "content") == "The Drift lasts 32 hours."
    assert {c["model"] for c in chunks} == {"plain-thinker"}
    metrics = (await client.get("/metrics")).text
    assert counter(metrics, "gateway_profile_filters_total", by="gateway") == 1


@pytest.mark.parametrize("cuts", [[], [9], [29, 31], [33, 37, 40], list(range(1, len(BANNED)))])
async def test_a_banned_phrase_never_gets_through_whoever_filters(
    services: tuple[Service, Service, httpx.AsyncClient], cuts: list[int]
) -> None:
    capable, legacy, client = services
    for service, profile in ((capable, "thinker"), (legacy, "plain-thinker")):
        service.text, service.cuts = BANNED, cuts
        _, chunks = await streamed(client, ask(profile))
        sent = texts(chunks, "content")
        assert "language model" not in sent and sent.endswith("Let me check with the team.")
        assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    metrics = (await client.get("/metrics")).text
    for profile in ("thinker", "plain-thinker"):
        assert counter(metrics, "gateway_guardrail_decisions_total", profile=profile, decision="blocked") == 1


async def test_an_answer_not_marked_filtered_is_filtered_by_the_gateway(
    services: tuple[Service, Service, httpx.AsyncClient],
) -> None:
    """A replica that advertises the extension but answers without the header (a rolling upgrade: the
    card came from another replica) is filtered by the gateway: the guardrail holds either way."""
    capable, _, client = services
    capable.applies = False
    capable.text = BANNED
    _, chunks = await streamed(client, ask("thinker"))
    assert FILTER_FIELD in capable.last_body()
    assert "language model" not in texts(chunks, "content")
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    capable.text = THOUGHT
    answer = (await client.post("/v1/chat/completions", json=ask("thinker"))).json()
    assert answer["choices"][0]["message"]["reasoning_content"] == "Sheet says 32."
    metrics = (await client.get("/metrics")).text
    assert counter(metrics, "gateway_profile_filters_total", by="gateway") == 2
    assert counter(metrics, "gateway_profile_filters_total", by="service") == 0


@pytest.mark.parametrize("text", [THOUGHT, BANNED])
async def test_whole_answers_the_same_either_way(
    services: tuple[Service, Service, httpx.AsyncClient], text: str
) -> None:
    capable, legacy, client = services
    answers = []
    for service, profile in ((capable, "thinker"), (legacy, "plain-thinker")):
        service.text = text
        r = await client.post("/v1/chat/completions", json=ask(profile))
        assert r.status_code == 200 and FILTER_HEADER not in r.headers
        answer = r.json()
        assert answer["model"] == profile
        answers.append(answer["choices"][0])
    assert answers[0] == answers[1]
    metrics = (await client.get("/metrics")).text
    decision = "passed" if text == THOUGHT else "blocked"
    for profile in ("thinker", "plain-thinker"):
        assert counter(metrics, "gateway_guardrail_decisions_total", profile=profile, decision=decision) == 1


@pytest.mark.parametrize("cut", range(1, len(THOUGHT), 3))
async def test_streams_the_same_either_way(services: tuple[Service, Service, httpx.AsyncClient], cut: int) -> None:
    capable, legacy, client = services
    results = []
    for service, profile in ((capable, "thinker"), (legacy, "plain-thinker")):
        service.cuts = [cut]
        _, chunks = await streamed(client, ask(profile))
        results.append((texts(chunks, "reasoning_content"), texts(chunks, "content"), chunks[-1]["choices"][0]))
    assert results[0] == results[1]
