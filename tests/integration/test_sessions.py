"""A conversation through the real gateway, inference-gguf and history services with the openai SDK."""

from __future__ import annotations

import httpx
import openai

from tests.integration.helpers import MODEL
from tests.services import Service


def test_two_turns_with_one_session_id_are_remembered_and_stored(
    client: openai.OpenAI, history: Service, gateway: Service
) -> None:
    session = {"session_id": "it-two-turns"}
    first = client.chat.completions.create(
        model=MODEL,
        temperature=0,
        max_tokens=12,
        extra_body=session,
        messages=[{"role": "user", "content": "My name is Ada. Say hello to me."}],
    )
    stream = client.chat.completions.create(
        model=MODEL,
        temperature=0,
        max_tokens=12,
        extra_body=session,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "What is my name?"}],
    )
    chunks = list(stream)
    second_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    second_usage = chunks[-1].usage
    alone = client.chat.completions.create(
        model=MODEL, temperature=0, max_tokens=12, messages=[{"role": "user", "content": "What is my name?"}]
    )
    assert first.usage is not None and second_usage is not None and alone.usage is not None
    # the second prompt holds the first exchange: longer than the same question alone by at least the first
    # user message and the first answer
    assert second_usage.prompt_tokens >= alone.usage.prompt_tokens + first.usage.completion_tokens + 8
    stored = httpx.get(f"{history.url}/v1/sessions/it-two-turns/messages").json()["messages"]
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "My name is Ada. Say hello to me."),
        ("assistant", first.choices[0].message.content),
        ("user", "What is my name?"),
        ("assistant", second_text),
    ]
    assert [m["seq"] for m in stored] == [1, 2, 3, 4]
    via_seed_route = httpx.get(f"{gateway.url}/messages", params={"session_id": "it-two-turns"}).json()
    assert len(via_seed_route["messages"]) == 4


def test_the_finetune_chat_route_streams_tokens_and_remembers(gateway: Service) -> None:
    httpx.post(f"{gateway.url}/clear-history", params={"session_id": "it-finetune"})
    with httpx.stream(
        "POST", f"{gateway.url}/chat", json={"prompt": "Hello!", "session_id": "it-finetune"}, timeout=120
    ) as response:
        body = b"".join(response.iter_bytes())
    assert response.status_code == 200
    assert body.startswith(b'data: {"token":') and body.endswith(b"data: [DONE]\n\n")
    listed = httpx.get(f"{gateway.url}/messages", params={"session_id": "it-finetune"}).json()["messages"]
    assert [m["role"] for m in listed] == ["user", "assistant"]
    status = httpx.get(f"{gateway.url}/status").json()
    assert status["model"] == "finetune-chat" and status["model_loaded"] and status["database"] == "connected"
