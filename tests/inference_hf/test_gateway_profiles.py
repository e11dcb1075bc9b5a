"""The two seed routes and a profile end to end on the real HF model (SmolLM2 through transformers, the
inference-hf service on a real port; see conftest.py) behind the real gateway app. SmolLM2 does not emit
<think>, so thought_process is empty; the split itself is tested in tests/gateway/test_profile_routes.py."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.gateway.fakes import gateway
from tests.inference_hf.conftest import Service

PROFILES = """
profiles:
  - id: cern-hf
    model: smol
    system_prompt: You are Cern, a product specialist. Answer in one sentence.
    sampling: {temperature: 0, max_tokens: 24}
    reasoning: {}
    guardrails: {banned: ["paris"], fallback: "I cannot name that city."}
"""


@pytest.fixture
def profiles(tmp_path: Path) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(PROFILES)
    return path


async def test_seed_routes_on_the_hf_model(service: Service, profiles: Path) -> None:
    async with gateway(
        {"inference-hf": [service.url]}, profiles_file=profiles, cern_profile="cern-hf", chatqna_model="smol"
    ) as client:
        r = await client.post(
            "/api/chat",
            json={"history": [{"role": "cern", "content": "Hello!"}], "user_prompt": "Say hello back."},
            timeout=120,
        )
        assert r.status_code == 200, r.text
        answer = r.json()
        assert set(answer) == {"cern_response", "thought_process"}
        assert answer["cern_response"].strip() and answer["thought_process"] == ""

        r = await client.post(
            "/api/chat", json={"history": [], "user_prompt": "Which city is the capital of France?"}, timeout=120
        )
        # The model says Paris (greedy); the guardrail replaces the answer.
        assert r.json() == {"cern_response": "I cannot name that city.", "thought_process": ""}

        body = {
            "messages": [{"role": "user", "content": "When does the shop open?"}],
            "stream": True,
            "context": ["The shop opens at 9:00."],
            "meta": {"auth_token": ""},
            "max_tokens": 16,
        }
        r = await client.post("/v1/chatqna", json=body, timeout=120)
        assert r.status_code == 200, r.text
        events = [line[6:] for line in r.text.split("\n\n") if line.startswith("data: ")]
        assert events[-1] == "[DONE]"
        chunks = [orjson.loads(e) for e in events[:-1]]
        assert {c["model"] for c in chunks} == {"chatqna"}
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]).strip()
        r = await client.post("/v1/chatqna", json={**body, "stream": False}, timeout=120)
        assert r.json()["model"] == "chatqna" and r.json()["choices"][0]["message"]["content"]
