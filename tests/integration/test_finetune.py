"""Seed 003's ``POST /chat`` on the real bundled model: the route applies the FineTuneLLM backend's sampling
(150-token cap, stop sequences, temperature 0.5, top_k 40, top_p 0.9, repeat penalty 1.1) itself, so it
holds on a model served without those defaults (the plain bundled model here; the main fixture's
'finetune-chat' has them in its inference-gguf config too)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.helpers import MODEL, SEED_003_DEFAULTS, SEED_003_STOPS
from tests.services import Service, free_port, start_service

pytestmark = pytest.mark.integration

SEED = 7  # GATEWAY_FINETUNE_SAMPLING may add one, which makes the sampled answer reproducible
PROMPT = "Tell me a long story about a dragon who learns to cook."


@pytest.fixture(scope="module")
def plain_finetune_gateway(inference: Service, history: Service, logs: Path) -> Iterator[Service]:
    port = free_port()
    service = start_service(
        "gateway-finetune",
        ["-m", "gateway"],
        {
            "GATEWAY_PORT": str(port),
            "GATEWAY_SERVICES": f'{{"inference-gguf": ["{inference.url}"]}}',
            "GATEWAY_HISTORY_URL": history.url,
            "GATEWAY_RETRIEVER_URL": "",
            "GATEWAY_FINETUNE_MODEL": MODEL,
            "GATEWAY_FINETUNE_SAMPLING": f'{{"seed": {SEED}}}',
        },
        port,
        logs,
    )
    yield service
    service.stop()


def _stored(history: Service, session: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{history.url}/v1/sessions/{session}/messages", params={"limit": 10})
    return response.json()["messages"]  # type: ignore[no-any-return]


def _direct(inference: Service, **sampling: Any) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "seed": SEED, **sampling}
    response = httpx.post(f"{inference.url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def test_chat_samples_with_the_seeds_settings(
    plain_finetune_gateway: Service, history: Service, inference: Service
) -> None:
    session = "it-finetune-sampling"
    with httpx.stream(
        "POST", f"{plain_finetune_gateway.url}/chat", json={"prompt": PROMPT, "session_id": session}, timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.read().endswith(b"data: [DONE]\n\n")
    user, answer = _stored(history, session)
    assert (user["role"], user["content"]) == ("user", PROMPT)
    assert user["created_at"] <= answer["created_at"]
    # The same request straight to the model with seed 003's settings gives the same text, token for token.
    expected = _direct(inference, **SEED_003_DEFAULTS)
    assert answer["content"] == expected["choices"][0]["message"]["content"]
    assert answer["completion_tokens"] == expected["usage"]["completion_tokens"] <= 150
    assert answer["metadata"]["finish_reason"] == expected["choices"][0]["finish_reason"]
    assert not any(stop in answer["content"] for stop in SEED_003_STOPS)
    # ... and the model's own defaults would not have.
    assert _direct(inference)["choices"][0]["message"]["content"] != answer["content"]
