"""The HTTP API on real models: the service on a real port, a real HTTP client (see conftest.py)."""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from chat_common.generation import Sequence
from tests.engines import Collector
from tests.inference_hf.conftest import Service
from tests.sampling import greedy

QUESTION = [{"role": "user", "content": "What is 2+2?"}]


def chat(service: Service, model: str, **body: Any) -> httpx.Response:
    return service.client.post("/v1/chat/completions", json={"model": model, "messages": QUESTION, **body})


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any] | str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            yield data if data == "[DONE]" else json.loads(data)


def wait_for(predicate: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def engine_log() -> Iterator[list[logging.LogRecord]]:
    """The engine's "generation finished" records."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage() == "generation finished":
                records.append(record)

    handler = Keep()
    log = logging.getLogger("inference_hf.engine")
    log.addHandler(handler)
    old = log.level
    log.setLevel(logging.INFO)
    yield records
    log.removeHandler(handler)
    log.setLevel(old)


def test_models_lists_every_configured_model_with_its_state(service: Service) -> None:
    assert service.client.post("/v1/models/bart-untemplated/unload").status_code == 200
    data = service.client.get("/v1/models").json()
    assert data["object"] == "list"
    cards = {c["id"]: c for c in data["data"]}
    assert list(cards) == ["smol", "smol-nf4", "smol-8bit", "bart", "bart-templated", "bart-untemplated"]
    for card in cards.values():
        assert card["object"] == "model" and card["owned_by"] == "inference-hf"
        assert set(card["state"]) >= {
            "loaded",
            "device",
            "quantization",
            "dtype",
            "memory_bytes",
            "last_used",
            "keep_alive_s",
        }
    smol, nf4, idle = cards["smol"], cards["smol-nf4"], cards["bart-untemplated"]
    assert smol["context_length"] == 256  # max_context from the config
    assert smol["state"]["loaded"] and smol["state"]["device"] == "cpu" and smol["state"]["dtype"] == "float32"
    assert smol["state"]["quantization"] == "none" and smol["state"]["keep_alive_s"] == -1
    assert nf4["state"]["quantization"] == "4bit-nf4"
    assert nf4["state"]["memory_bytes"] < smol["state"]["memory_bytes"] / 3  # 166 MB against 538 MB
    assert idle["state"]["loaded"] is False and idle["state"]["memory_bytes"] == 0
    assert idle["state"]["device"] is None and idle["context_length"] == 64  # read from its config.json
    assert service.client.get("/v1/models/smol").json() == service.client.get("/v1/models").json()["data"][0]


def test_full_precision_answers(service: Service) -> None:
    response = chat(service, "smol", temperature=0, max_tokens=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "smol"
    assert body["choices"][0]["message"]["content"] == "The answer to this classic math problem is 4."
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == 37  # llama-server counts the same prompt the same
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert response.headers["x-request-id"]


def test_nf4_answers(service: Service) -> None:
    body = chat(service, "smol-nf4", temperature=0, max_tokens=6).json()
    assert body["choices"][0]["message"]["content"].strip()
    assert body["usage"]["completion_tokens"] <= 6


def test_8bit_loads_on_first_request_and_answers(service: Service) -> None:
    service.client.post("/v1/models/smol-8bit/unload")
    assert service.client.get("/v1/models/smol-8bit").json()["state"]["loaded"] is False
    body = chat(service, "smol-8bit", temperature=0, max_tokens=6).json()
    assert body["choices"][0]["message"]["content"].strip(), body
    state = service.client.get("/v1/models/smol-8bit").json()["state"]
    assert state["loaded"] and state["quantization"] == "8bit"
    assert 0 < state["memory_bytes"] < service.client.get("/v1/models/smol").json()["state"]["memory_bytes"] / 2


def test_stop_sequences_and_max_tokens(service: Service) -> None:
    body = chat(service, "smol", temperature=0, stop=["classic"]).json()
    assert body["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "The answer to this "},
        "finish_reason": "stop",
        "logprobs": None,
    }
    body = chat(service, "smol", temperature=0, max_tokens=3).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3


def test_streaming_gives_the_same_answer_token_by_token(service: Service) -> None:
    whole = chat(service, "smol", temperature=0, max_tokens=30).json()
    with service.client.stream(
        "POST",
        "/v1/chat/completions",
        json={
            "model": "smol",
            "messages": QUESTION,
            "temperature": 0,
            "max_tokens": 30,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) > 5
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert len({c["id"] for c in chunks}) == 1


def test_encoder_decoder_model_answers(service: Service) -> None:
    body = chat(service, "bart", max_tokens=5, ignore_eos=True, temperature=0).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 5
    assert body["choices"][0]["message"]["content"]  # random weights: words, not sense
    sampled = chat(service, "bart", max_tokens=12, ignore_eos=True, temperature=1.0, top_k=0, min_p=0, seed=7).json()
    text = sampled["choices"][0]["message"]["content"]
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = chat(
        service, "bart", max_tokens=12, ignore_eos=True, temperature=1.0, top_k=0, min_p=0, seed=7, stop=[stop]
    ).json()
    assert cut["choices"][0]["message"]["content"] == text[: text.find(stop)]
    assert cut["choices"][0]["finish_reason"] == "stop"
    card = service.client.get("/v1/models/bart").json()["state"]
    assert card["encoder_decoder"] is True and card["batching"] == "cohort"


def test_missing_chat_template_is_a_clear_400_unless_one_is_configured(service: Service) -> None:
    response = chat(service, "bart-untemplated", max_tokens=2)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "chat_template" and "has no chat template" in error["message"]
    assert "chat_template" in error["message"] and error["param"] == "messages"
    assert chat(service, "bart-templated", max_tokens=2).status_code == 200


def test_unknown_model_is_404_listing_the_configured_ids(service: Service) -> None:
    for response in (
        chat(service, "gpt-17"),
        service.client.post("/v1/models/gpt-17/load"),
        service.client.post("/v1/models/gpt-17/unload"),
        service.client.get("/v1/models/gpt-17"),
    ):
        assert response.status_code == 404
        error = response.json()["error"]
        assert error["code"] == "model_not_found" and error["type"] == "not_found_error"
        listed = "Available models: smol, smol-nf4, smol-8bit, bart, bart-templated, bart-untemplated."
        assert listed in error["message"]


def test_context_errors_give_token_counts(service: Service) -> None:
    long = [{"role": "user", "content": "word " * 300}]
    response = service.client.post("/v1/chat/completions", json={"model": "smol", "messages": long})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and "maximum context length is 256 tokens" in error["message"]
    assert "but the messages use 3" in error["message"]
    response = chat(service, "smol", max_tokens=250)
    assert response.status_code == 400
    assert "you requested 287 tokens (37 in the messages, 250 in the completion)" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b'{"model": "smol"}', "messages"),
        (b'{"model": "smol", "messages": [{"role": "user", "content": "x"}], "temperature": 9}', "temperature"),
    ],
)
def test_bad_input_is_400(service: Service, body: bytes, param: str | None) -> None:
    response = service.client.post("/v1/chat/completions", content=body)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("response_format", {"type": "json_object"}),
        ("tools", [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]),
        ("tool_choice", "auto"),
        ("logprobs", True),
        ("top_logprobs", 2),
    ],
)
def test_what_the_engine_cannot_do_is_a_400_naming_the_field(service: Service, field: str, value: object) -> None:
    response = chat(service, "smol", **{field: value})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (field, "unsupported_parameter") and "'smol'" in error["message"]


def test_plain_text_response_format_and_declined_tools_are_answered(service: Service) -> None:
    response = chat(
        service,
        "smol",
        max_tokens=2,
        response_format={"type": "text"},
        tools=[{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}],
        tool_choice="none",
    )
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] == 2


def test_an_answer_without_max_tokens_ends_at_the_service_default(service: Service) -> None:
    """INFERENCE_HF_DEFAULT_MAX_TOKENS is 12 in this service (conftest.py); ignore_eos keeps the model going."""
    body = chat(service, "smol", temperature=0, ignore_eos=True).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 12


def test_queue_full_is_429_with_retry_after(service: Service) -> None:
    service.client.post("/v1/models/bart-templated/load")
    engine = service.engine
    tokens = engine.tokenize("bart-templated", engine.render("bart-templated", QUESTION))
    holder = Collector(hold=True)
    engine.submit("bart-templated", Sequence(tokens, greedy(2, ignore_eos=True), holder))
    assert holder.reached.wait(60)  # the worker is held: requests now wait in the queue
    waiting = [Collector(), Collector()]
    try:
        for sink in waiting:
            engine.submit("bart-templated", Sequence(tokens, greedy(1), sink))
        response = chat(service, "bart-templated", max_tokens=1)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "queue_full"
        assert service.manager.state("bart-templated").in_flight == 0  # the refused request holds nothing
    finally:
        holder.release()
    for sink in [holder, *waiting]:
        sink.result()


def test_concurrent_requests_decode_together(service: Service) -> None:
    before = service.engine.stats("smol")
    results: list[httpx.Response] = []

    def ask(question: str) -> None:
        with httpx.Client(base_url=service.url, timeout=120) as client:
            results.append(
                client.post(
                    "/v1/chat/completions",
                    json={
                        "model": "smol",
                        "messages": [{"role": "user", "content": question}],
                        "max_tokens": 16,
                        "temperature": 0,
                        "ignore_eos": True,
                    },
                )
            )

    threads = [threading.Thread(target=ask, args=(q,)) for q in ("Tell me a story.", "Describe the sea.")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in results] == [200, 200]
    after = service.engine.stats("smol")
    rows, passes = after.decode_rows - before.decode_rows, after.decode_passes - before.decode_passes
    assert rows == 30  # 2 x 16 tokens, the first of each from its prefill
    assert passes < rows  # some passes carried both requests
    assert after.max_batch_rows >= 2
    metrics = service.client.get("/metrics").text
    assert 'inference_hf_forward_passes_total{kind="decode",model="smol"}' in metrics


def test_client_leaving_a_stream_cancels_its_sequence(service: Service, engine_log: list[logging.LogRecord]) -> None:
    before = service.engine.stats("smol")
    with service.client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "smol", "messages": QUESTION, "max_tokens": 200, "ignore_eos": True, "stream": True},
    ) as response:
        lines = response.iter_lines()
        while not next(lines).startswith('data: {"id"'):
            pass
    # the connection is closed now; the engine drops the sequence at its next step
    wait_for(lambda: service.engine.stats("smol").cancelled > before.cancelled, "the cancellation")
    record = next(r for r in engine_log if getattr(r, "finish_reason", None) == "cancelled")
    assert record.completion_tokens < 200  # type: ignore[attr-defined]
    wait_for(lambda: service.manager.state("smol").in_flight == 0, "the lease to be released")


def test_client_leaving_a_plain_request_cancels_it(service: Service) -> None:
    before = service.engine.stats("smol")
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{service.url}/v1/chat/completions",
            timeout=1.0,
            json={"model": "smol", "messages": QUESTION, "max_tokens": 200, "ignore_eos": True},
        )
    wait_for(lambda: service.engine.stats("smol").cancelled > before.cancelled, "the cancellation")
    assert service.engine.stats("smol").generated_tokens - before.generated_tokens < 200


def test_unloading_a_model_with_a_request_in_flight_is_409(service: Service) -> None:
    with service.client.stream(
        "POST",
        "/v1/chat/completions",
        json={"model": "smol-nf4", "messages": QUESTION, "max_tokens": 200, "ignore_eos": True, "stream": True},
    ) as response:
        next(response.iter_lines())
        refused = service.client.post("/v1/models/smol-nf4/unload")
        assert refused.status_code == 409
        assert refused.json()["error"]["code"] == "model_busy"
    wait_for(lambda: service.manager.state("smol-nf4").in_flight == 0, "the stream to end")
    assert service.client.get("/v1/models/smol-nf4").json()["state"]["loaded"] is True


def test_load_and_unload_free_the_memory(service: Service) -> None:
    manager = service.manager
    loaded = service.client.post("/v1/models/smol-8bit/load")
    assert loaded.status_code == 200 and loaded.json()["state"]["loaded"] is True
    footprint = loaded.json()["state"]["memory_bytes"]
    total = manager.loaded_memory_bytes()
    model = service.engine.weak_model("smol-8bit")
    assert model() is not None

    unloaded = service.client.post("/v1/models/smol-8bit/unload")
    assert unloaded.status_code == 200
    state = unloaded.json()["state"]
    assert (state["loaded"], state["status"], state["memory_bytes"], state["device"]) == (False, "unloaded", 0, None)
    assert manager.loaded_memory_bytes() == total - footprint
    gc.collect()
    assert model() is None  # nothing holds the weights any more
    assert "smol-8bit" not in service.client.get("/ready").json()["loaded"]
    assert 'inference_hf_model_loaded{model="smol-8bit"} 0.0' in service.client.get("/metrics").text


def test_keep_alive_unloads_an_idle_model(service: Service) -> None:
    assert chat(service, "bart", max_tokens=2).status_code == 200  # keep_alive_s: 1
    model = service.engine.weak_model("bart")
    wait_for(lambda: not service.client.get("/v1/models/bart").json()["state"]["loaded"], "the keep-alive", 15)
    gc.collect()
    assert model() is None
    assert 'inference_hf_model_unloads_total{model="bart",reason="keep_alive"}' in service.client.get("/metrics").text
    assert chat(service, "bart", max_tokens=2).status_code == 200  # and it comes back on demand


def test_health_ready_metrics(service: Service) -> None:
    assert service.client.get("/health").json() == {"status": "ok"}
    ready = service.client.get("/ready").json()
    assert ready["status"] == "ready" and {"smol", "smol-nf4"} <= set(ready["loaded"])
    metrics = service.client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "inference_hf_requests_total" in metrics.text and "inference_hf_model_memory_bytes" in metrics.text


def test_a_pushed_down_profile_filter_is_applied(service: Service) -> None:
    """The gateway's profile filter as the request extension (chat_common.answer_filter), on the real model:
    its answer is "The answer to this classic math problem is 4.", so tags "The" / "this" split it."""
    assert service.client.get("/v1/models/smol").json()["switchboard_filter"] == 1
    spec = {"answer_model": "thinks", "reasoning_tags": ["The", "this"], "banned": ["banana"], "fallback": "No."}
    body = {"model": "smol", "messages": QUESTION, "temperature": 0, "max_tokens": 30, "switchboard_filter": spec}
    with service.client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status_code == 200 and response.headers["x-switchboard-filter"] == "1"
        events = list(sse_events(response))
    assert events[-1] == "[DONE]"
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert {c["model"] for c in chunks} == {"thinks"}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == " answer to "
    assert "".join(d.get("content", "") for d in deltas) == "classic math problem is 4."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    blocked = service.client.post(
        "/v1/chat/completions", json={**body, "switchboard_filter": {**spec, "banned": ["math problem"]}}
    )
    assert blocked.headers["x-switchboard-filter"] == "1"
    assert blocked.json()["choices"][0]["message"] == {"role": "assistant", "content": "No."}
    assert blocked.json()["choices"][0]["finish_reason"] == "content_filter"
