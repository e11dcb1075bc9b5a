"""The service over HTTP (a real ``python -m inference_gguf`` on a free port, the bundled model, 2 slots):
the official SDK against its batching, structured answers and refusals, and the batching series on /metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from tests.services import Service, free_port, start_service

pytestmark = pytest.mark.integration
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    logs = tmp_path_factory.mktemp("gguf-service")
    port = free_port()
    env = {
        "INFERENCE_GGUF_PORT": str(port),
        "INFERENCE_GGUF_MODELS_DIR": str(Path(logs) / "no-models"),
        "INFERENCE_GGUF_N_CTX": "2048",
        "INFERENCE_GGUF_N_SLOTS": "2",
        "INFERENCE_GGUF_N_THREADS": "2",
    }
    service = start_service("inference-gguf", ["-m", "inference_gguf"], env, port, Path(logs))
    yield service
    service.stop()


def _metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_streams_share_steps_and_metrics_say_so(service: Service) -> None:
    client = openai.OpenAI(base_url=service.url + "/v1", api_key="unused")
    before = httpx.get(service.url + "/metrics").text

    def stream(question: str) -> str:
        chunks = client.chat.completions.create(
            model=MODEL,
            stream=True,
            temperature=0,
            max_tokens=24,
            extra_body={"ignore_eos": True},
            messages=[{"role": "user", "content": question}],
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(stream, ["Name a colour.", "Name a fruit."]))
    assert all(answers)
    after = httpx.get(service.url + "/metrics").text
    assert _metric(after, "inference_gguf_slots") == 2
    assert _metric(after, "inference_gguf_slots_busy") == 0  # both finished
    steps = _metric(after, "inference_gguf_batch_sequences_count") - _metric(
        before, "inference_gguf_batch_sequences_count"
    )
    sequences = _metric(after, "inference_gguf_batch_sequences_sum") - _metric(
        before, "inference_gguf_batch_sequences_sum"
    )
    assert steps < 48 and sequences / steps > 1.5  # 2 x 24 tokens in far fewer than 48 steps
    evaluated = _metric(after, "inference_gguf_prompt_tokens_evaluated_total")
    assert evaluated > _metric(before, "inference_gguf_prompt_tokens_evaluated_total")


def test_a_json_schema_answer_parses_and_follows_the_schema(service: Service) -> None:
    client = openai.OpenAI(base_url=service.url + "/v1", api_key="unused")
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    reply = client.chat.completions.create(
        model=MODEL,
        temperature=0,
        max_tokens=60,
        messages=[{"role": "user", "content": "Ada is 36."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}},
    )
    person = json.loads(reply.choices[0].message.content or "")
    assert set(person) == {"name", "age"} and type(person["age"]) is int


@pytest.mark.parametrize(
    ("field", "value"),
    [("response_format", {"type": "yaml"}), ("logprobs", True), ("top_logprobs", 3)],
)
def test_what_the_model_cannot_do_is_a_400_naming_the_field(service: Service, field: str, value: object) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], field: value}
    response = httpx.post(service.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"
