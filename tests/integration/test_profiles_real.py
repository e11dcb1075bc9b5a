"""Profiles and the two seed routes on the real bundled model (inference-gguf, llama.cpp) behind the real
gateway, with the demo profiles that make run ships (deploy/profiles.yaml).

SmolLM2 does not emit ``<think>``: the reasoning split on a thinking model is tested with a scripted
upstream in tests/gateway/test_profile_routes.py; here thought_process is empty and the answer whole, and
the profile 'thinks' takes two words of the model's own greedy answer as its tags, to split real tokens.

inference-gguf advertises the pushed-down answer filter (chat_common.answer_filter), so these profiles'
answers are split and guarded by the service and relayed by the gateway as they come
(``gateway_profile_filters_total{by="service"}``)."""

from __future__ import annotations

import httpx
import openai
import orjson
import pytest

from chat_common.answer_filter import FILTER_FIELD, FILTER_HEADER
from tests.integration.conftest import reasoning_tags
from tests.integration.helpers import MODEL, QUESTION, metric
from tests.services import Service

pytestmark = pytest.mark.integration


def test_cern_route_as_the_seed_documents(gateway: Service) -> None:
    body = {
        "history": [
            {"role": "user", "content": "Hello, who are you?"},
            {"role": "cern", "content": "I'm Cern, a product specialist at Lumen Audio."},
        ],
        "user_prompt": "What is the battery life of the Lumen Drift?",
    }
    r = httpx.post(f"{gateway.url}/api/chat", json=body, timeout=120)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert set(answer) == {"cern_response", "thought_process"}
    assert isinstance(answer["cern_response"], str) and answer["cern_response"].strip()
    assert answer["thought_process"] == ""
    assert "language model" not in answer["cern_response"].lower()


def test_chatqna_route_whole_and_streamed(gateway: Service) -> None:
    body = {
        "messages": [{"role": "user", "content": "At what time does the shop open?"}],
        "stream": False,
        "context": ["The shop opens at 9:00 every weekday."],
        "meta": {"auth_token": ""},
    }
    r = httpx.post(f"{gateway.url}/v1/chatqna", json=body, timeout=120)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == "chatqna" and answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["role"] == "assistant" and answer["choices"][0]["message"]["content"]
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")
    assert answer["usage"]["prompt_tokens"] > 0
    with httpx.stream("POST", f"{gateway.url}/v1/chatqna", json={**body, "stream": True}, timeout=120) as s:
        assert s.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {"chatqna"}
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]).strip()


def test_health_is_the_seeds(gateway: Service) -> None:
    assert httpx.get(f"{gateway.url}/health", timeout=10).json() == {"status": "ok"}


def test_profile_as_a_model_through_the_sdk(client: openai.OpenAI) -> None:
    assert {"cern", "chatqna", "no-france"} <= {m.id for m in client.models.list().data}
    parts = list(
        client.chat.completions.create(
            model="cern", messages=[{"role": "user", "content": "How long is the warranty?"}], stream=True
        )
    )
    assert {p.model for p in parts} == {"cern"}
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices).strip()


def test_guardrail_replaces_the_real_answer(client: openai.OpenAI, gateway: Service) -> None:
    plain = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=24,
    )
    assert "france" in (plain.choices[0].message.content or "").lower()  # what the guardrail is up against
    before = metric(gateway, "gateway_guardrail_decisions_total", profile="no-france", decision="blocked")
    pushed = metric(gateway, "gateway_profile_filters_total", by="service")
    whole = client.chat.completions.create(model="no-france", messages=[{"role": "user", "content": QUESTION}])
    assert whole.choices[0].message.content == "I cannot talk about that country."
    assert whole.choices[0].finish_reason == "content_filter"
    parts = list(
        client.chat.completions.create(model="no-france", messages=[{"role": "user", "content": QUESTION}], stream=True)
    )
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert "france" not in text.lower() and text.endswith("I cannot talk about that country.")
    after = metric(gateway, "gateway_guardrail_decisions_total", profile="no-france", decision="blocked")
    assert after - before == 2
    assert metric(gateway, "gateway_profile_filters_total", by="service") - pushed == 2  # inference-gguf did it


def test_the_service_applies_a_filter_it_is_sent(inference: Service) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 24,
        FILTER_FIELD: {"answer_model": "no-france", "banned": ["france"], "fallback": "Elsewhere."},
    }
    r = httpx.post(f"{inference.url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200 and r.headers[FILTER_HEADER] == "1"
    answer = r.json()
    assert answer["model"] == "no-france"
    assert answer["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "Elsewhere."},
        "finish_reason": "content_filter",
        "logprobs": None,
    }
    with httpx.stream("POST", f"{inference.url}/v1/chat/completions", json={**body, "stream": True}, timeout=120) as s:
        assert s.headers[FILTER_HEADER] == "1"
        events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert "france" not in text.lower() and text.endswith("Elsewhere.")
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"
    bad = httpx.post(f"{inference.url}/v1/chat/completions", json={**body, FILTER_FIELD: {"banned": [" "]}}, timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == FILTER_FIELD


def test_reasoning_split_of_real_tokens(client: openai.OpenAI, gateway: Service, greedy_answer: str) -> None:
    open_tag, close_tag = reasoning_tags(greedy_answer)
    rest = greedy_answer.lstrip()[len(open_tag) :]
    at = rest.find(close_tag)
    reasoning, content = rest[:at], rest[at + len(close_tag) :].lstrip()
    pushed = metric(gateway, "gateway_profile_filters_total", by="service")
    ask = [{"role": "user", "content": QUESTION}]
    whole = client.chat.completions.create(model="thinks", messages=ask)
    assert whole.model == "thinks"
    assert (whole.choices[0].message.model_extra or {})["reasoning_content"] == reasoning
    assert whole.choices[0].message.content == content
    kinds, thought, said = [], [], []
    for part in client.chat.completions.create(model="thinks", messages=ask, stream=True):
        assert part.model == "thinks"
        if not part.choices:
            continue
        delta = part.choices[0].delta
        if extra := (delta.model_extra or {}).get("reasoning_content"):
            kinds.append("r")
            thought.append(extra)
        if delta.content:
            kinds.append("c")
            said.append(delta.content)
    assert "".join(thought) == reasoning and "".join(said) == content
    assert kinds == sorted(kinds, reverse=True)  # every reasoning chunk before the first content chunk
    assert metric(gateway, "gateway_profile_filters_total", by="service") - pushed == 2
