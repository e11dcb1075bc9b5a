"""The official openai SDK against the real gateway and the real inference-gguf service.

Expected answers are llama.cpp's own greedy answers for the same model and prompt on this machine
(tests/llama_reference.py): at temperature 0 the output is deterministic for a given build and CPU.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import httpx
import llama_cpp
import openai
import pytest

from chat_common.bundled import bundled_gguf_path
from tests.integration.helpers import MODEL, metric, wait_until
from tests.llama_reference import RECORDED, llama_cpp_answers
from tests.services import Service, free_port, start_service

pytestmark = pytest.mark.integration

QUESTION = RECORDED["cases"][0]["messages"][0]["content"]  # "Which city is the capital of France?"


@pytest.fixture(scope="module")
def france() -> dict[str, Any]:
    return llama_cpp_answers()[0]


def test_models_of_the_service_are_listed(client: openai.OpenAI) -> None:
    ids = {m.id: m.owned_by for m in client.models.list()}
    assert {k: v for k, v in ids.items() if v != "switchboard-profile"} == {
        MODEL: "inference-gguf",
        "finetune-chat": "inference-gguf",
    }


def test_non_streamed_answer_and_usage(
    client: openai.OpenAI, gateway: Service, inference: Service, france: dict[str, Any]
) -> None:
    response = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=60,
        extra_headers={"X-Request-ID": "sdk-non-stream-1"},
    )
    assert response.choices[0].message.content == france["content"]
    assert response.choices[0].finish_reason == "stop"
    assert response.usage is not None
    assert (response.usage.prompt_tokens, response.usage.completion_tokens) == (
        france["usage"]["prompt_tokens"],
        france["usage"]["completion_tokens"],
    )
    for service in (gateway, inference):  # the request id crossed both hops and is in both JSON logs
        lines = [json.loads(line) for line in service.log().splitlines() if "sdk-non-stream-1" in line]
        assert any(line.get("route") == "/v1/chat/completions" and line["status"] == 200 for line in lines)


def test_streamed_answer_is_the_same_text(client: openai.OpenAI, france: dict[str, Any]) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=60,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == france["content"]
    assert finish == ["stop"]
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == france["usage"]["completion_tokens"]


def test_stop_sequences_and_max_tokens(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "What is 2+2?"}]
    whole = llama_cpp_answers()[4]["content"]
    assert llama_cpp_answers()[4]["messages"] == messages
    words = whole.split()
    stop = words[len(words) // 2]  # a word from the middle of the answer: it ends at its first occurrence
    stopped = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, stop=[stop, "never"])
    assert stopped.choices[0].message.content == whole[: whole.index(stop)] != ""
    assert stopped.choices[0].finish_reason == "stop"
    limited = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=4)
    assert limited.choices[0].finish_reason == "length"
    assert limited.usage is not None and limited.usage.completion_tokens == 4


def test_per_model_defaults_apply(client: openai.OpenAI) -> None:
    """'finetune-chat' carries seed 003's defaults, max_tokens 150 among them."""
    response = client.chat.completions.create(
        model="finetune-chat",
        messages=[{"role": "user", "content": "Tell me about the sea."}],
        stop=[],
        extra_body={"ignore_eos": True},
    )
    assert response.usage is not None and response.usage.completion_tokens == 150
    assert response.choices[0].finish_reason == "length"


def test_an_answer_without_max_tokens_is_bounded(client: openai.OpenAI) -> None:
    """No max_tokens and no model default: the service's default answer length (512), not the 2,048-token context."""
    response = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me about the sea."}], extra_body={"ignore_eos": True}
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 512


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}
                ]
            },
            "messages[0].content[0]",
        ),
    ],
)
def test_what_the_model_cannot_do_is_refused_through_the_gateway(
    client: openai.OpenAI, change: dict[str, Any], param: str
) -> None:
    request: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], **change}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(**request)
    assert caught.value.param == param and caught.value.code == "unsupported_parameter"


def test_unknown_model_lists_the_available_ones(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert MODEL in str(caught.value) and "finetune-chat" in str(caught.value)


def test_bad_input_is_a_clear_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "hi"}])  # type: ignore[misc]


def test_a_prompt_longer_than_the_context_is_refused_with_counts(client: openai.OpenAI, inference: Service) -> None:
    before = metric(inference, "inference_gguf_generation_tokens_total")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hello " * 9000}])
    message = str(caught.value)
    assert "maximum context length is 8192 tokens" in message
    counted = re.search(r"the messages use (\d+) tokens", message)
    assert counted is not None, message
    words = len(_tokenizer().tokenize(("hello " * 9000).encode(), add_bos=False, special=False))
    assert words < int(counted.group(1)) < words + 100  # the message's tokens and the chat template's few
    assert caught.value.code == "context_length_exceeded"
    assert metric(inference, "inference_gguf_generation_tokens_total") == before  # no model work


def test_client_disconnect_stops_the_generation(client: openai.OpenAI, inference: Service) -> None:
    cancelled = metric(inference, "inference_gguf_requests_total", finish_reason="cancelled")
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to ten thousand."}],
        max_tokens=4000,
        stream=True,
        extra_body={"ignore_eos": True},
        extra_headers={"X-Request-ID": "disconnect-test-1"},
    )
    for _, _chunk in zip(range(5), stream, strict=False):
        pass
    stream.close()  # the client goes away mid-stream

    wait_until(
        lambda: metric(inference, "inference_gguf_requests_total", finish_reason="cancelled") > cancelled,
        "the generation was not cancelled",
    )
    wait_until(lambda: _finished("disconnect-test-1", inference) is not None, "no 'generation finished' line")
    # nothing decodes any more: the sequence has left the engine
    wait_until(lambda: metric(inference, "inference_gguf_running") == 0, "a sequence is still running")
    line = _finished("disconnect-test-1", inference)
    assert line is not None
    assert line["finish_reason"] == "cancelled"
    assert line["completion_tokens"] < 1000  # stopped long before max_tokens=4000


def _finished(request_id: str, service: Service) -> dict[str, Any] | None:
    """The service's 'generation finished' log line for the request, or None while there is none."""
    for text in service.log().splitlines():
        if request_id in text and "generation finished" in text:
            return json.loads(text)  # type: ignore[no-any-return]
    return None


@functools.cache
def _tokenizer() -> llama_cpp.Llama:
    return llama_cpp.Llama(str(bundled_gguf_path()), vocab_only=True, verbose=False)


async def test_a_full_queue_answers_429_with_retry_after(gateway: Service) -> None:
    """The service under test decodes 2 sequences at once (INFERENCE_GGUF_N_SLOTS=2) and keeps at most 2
    more waiting (INFERENCE_GGUF_MAX_QUEUE=2)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count."}],
        "max_tokens": 3000,
        "stream": True,
        "ignore_eos": True,
    }
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as http:
        running = []
        readers = []  # kept: a line iterator that is garbage-collected closes its stream, which frees a slot
        for _ in range(2):  # both slots generating: each has streamed a token
            response = await http.send(http.build_request("POST", "/v1/chat/completions", json=body), stream=True)
            lines = response.aiter_lines()
            while '"content":""' in (line := await lines.__anext__()) or '"content"' not in line:
                pass
            running.append(response)
            readers.append(lines)
        waiting = [
            await http.send(http.build_request("POST", "/v1/chat/completions", json=body), stream=True)
            for _ in range(2)
        ]
        refused = await http.post("/v1/chat/completions", json=body)
        for response in (*running, *waiting):
            await response.aclose()
    assert [w.status_code for w in waiting] == [200, 200]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "queue_full"


def test_a_dead_upstream_is_a_503_that_names_it(logs: Path) -> None:
    port, gw_port = free_port(), free_port()
    fake = start_service("fake-upstream", ["bench/fake_upstream.py", "--port", str(port)], {}, port, logs)
    gw = start_service(
        "gateway",
        ["-m", "gateway"],
        {"GATEWAY_PORT": str(gw_port), "GATEWAY_SERVICES": f'{{"inference-fake": ["{fake.url}"]}}'},
        gw_port,
        logs,
    )
    try:
        sdk = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        assert sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
        fake.stop()
        with pytest.raises(openai.InternalServerError) as caught:
            sdk.chat.completions.create(model="fake-model", messages=[{"role": "user", "content": "hi"}])
        assert caught.value.status_code == 503
        assert "inference-fake" in str(caught.value) and fake.url in str(caught.value)
    finally:
        gw.stop()
        fake.stop()
