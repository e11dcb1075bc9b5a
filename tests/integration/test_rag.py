"""Retrieval-augmented answers from the real stack: the retriever holding the IT-support knowledge base
(ingested with its CLI), the bundled model on inference-gguf, the gateway in front; driven with the
official openai SDK (extra_body) and with the IT-support chatbot's own route (seed 002)."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.integration.helpers import MODEL
from tests.services import Service

pytestmark = pytest.mark.integration

QUESTION = "I forgot my password. How can I reset it myself?"


def test_a_non_streamed_answer_carries_its_sources(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=48,
        extra_body={"retrieval": {"collection": "it-support", "top_k": 3}},
    )
    assert response.choices[0].message.content
    sources = (response.model_extra or {})["sources"]
    assert [s["index"] for s in sources] == [1, 2, 3]
    assert "kb-0001" in [s["doc_id"] for s in sources]
    # the passages were in the prompt: far more prompt tokens than the question alone
    assert response.usage is not None and response.usage.prompt_tokens > 300


def test_a_streamed_answer_ends_with_a_sources_chunk(client: openai.OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "The VPN client will not connect, what can I check?"}],
            temperature=0,
            max_tokens=32,
            stream=True,
            extra_body={"retrieval": "it-support"},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    last = chunks[-1]
    assert last.choices == []
    sources = (last.model_extra or {})["sources"]
    assert len(sources) == 4 and {s["metadata"]["category"] for s in sources} & {"vpn"}
    assert all("sources" not in (c.model_extra or {}) for c in chunks[:-1])


def test_the_it_support_route_answers_from_the_knowledge_base(gateway: Service) -> None:
    response = httpx.post(
        f"{gateway.url}/api/v1/chat/",
        json={
            "query": "I forgot my password, how do I reset it? My password was Summer2024!",
            "top_k": 3,
            "max_tokens": 60,
        },
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["response"] and "Summer2024" not in body["response"]
    assert body["query"] == "I forgot my password, how do I reset it? My password was [REDACTED]!"
    assert body["search_results"][0]["subject"].startswith("Forgotten password")
    assert httpx.get(f"{gateway.url}/api/v1/chat/health", timeout=10).json()["status"] == "healthy"
