from __future__ import annotations

import orjson
import pytest

from tests.gateway.fakes import Handler, Replica, Reply, chat, completion, dead_url, gateway, models, running, sse


def _replica(chat_handler: Handler | None = None) -> Replica:
    return (
        Replica()
        .on("/v1/models", lambda r: models("m1", "m2"))
        .on("/v1/chat/completions", chat_handler or (lambda r: completion()))
    )


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (orjson.dumps({"model": "m1", "messages": []}), 400, "messages"),
        (orjson.dumps({"model": "m1", "messages": [{"role": "robot", "content": "x"}]}), 400, "role"),
        (chat(max_tokens=0), 400, "max_tokens"),
        (chat("nope"), 404, "Available models: m1, m2"),
    ],
)
async def test_bad_input_is_answered_by_the_gateway_and_reaches_no_model(
    body: bytes, status: int, fragment: str
) -> None:
    replica = _replica()
    async with running(replica), gateway({"inference-gguf": [replica.url]}) as client:
        response = await client.post("/v1/chat/completions", content=body)
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]
    assert replica.chat_requests() == []


async def test_wrong_method_on_the_chat_route_is_405_in_the_envelope() -> None:
    async with gateway({"inference-gguf": [dead_url()]}) as client:
        response = await client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert "POST" in response.json()["error"]["message"]


async def test_oversized_body_is_413() -> None:
    replica = _replica()
    async with running(replica), gateway({"inference-gguf": [replica.url]}, max_body_bytes=2048) as client:
        declared = await client.post("/v1/chat/completions", content=chat(pad="x" * 4000))

        async def chunks():  # no Content-Length: counted while reading
            for _ in range(5):
                yield b" " * 1000

        streamed = await client.post("/v1/chat/completions", content=chunks())
    assert declared.status_code == streamed.status_code == 413
    assert "GATEWAY_MAX_BODY_BYTES" in declared.json()["error"]["message"]
    assert replica.chat_requests() == []


async def test_service_down_is_503_naming_it() -> None:
    replica = _replica()
    async with running(replica), gateway({"inference-gguf": [replica.url]}) as client:
        await replica.stop()  # now refuses connections
        response = await client.post("/v1/chat/completions", content=chat())
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "inference-gguf" in message and replica.url in message


async def test_service_timeout_is_503_naming_it() -> None:
    replica = _replica(lambda r: Reply(payload={}, delay_s=2))
    async with running(replica), gateway({"inference-gguf": [replica.url]}, read_timeout_s=0.3) as client:
        response = await client.post("/v1/chat/completions", content=chat())
    assert response.status_code == 503
    assert "inference-gguf" in response.json()["error"]["message"]
    assert "0.3s" in response.json()["error"]["message"]


CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'


async def test_stream_passes_through_byte_for_byte() -> None:
    parts = [CHUNK[:10], CHUNK[10:] + CHUNK, b"data: [DONE]\n\n"]
    replica = _replica(lambda r: sse(parts))
    async with running(replica), gateway({"inference-gguf": [replica.url]}) as client:
        response = await client.post("/v1/chat/completions", content=chat(stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b"".join(parts)


@pytest.mark.parametrize("end", ["abort", "done"])
async def test_a_stream_cut_short_ends_with_an_error_event_and_done(end: str) -> None:
    parts = [CHUNK, CHUNK[:25]]  # the second event is incomplete when the upstream goes away
    replica = _replica(lambda r: sse(parts, end=end))
    async with running(replica), gateway({"inference-gguf": [replica.url]}) as client:
        response = await client.post("/v1/chat/completions", content=chat(stream=True))
    events = [e for e in response.content.split(b"\n\n") if e]
    assert events[0] + b"\n\n" == CHUNK
    error_event = orjson.loads(events[1].removeprefix(b"data: "))
    assert error_event["error"]["code"] == "stream_interrupted"
    assert "inference-gguf" in error_event["error"]["message"]
    assert events[2] == b"data: [DONE]"
    assert len(events) == 3
    assert b'"finish_reason":"stop"' not in response.content


async def test_a_stream_that_goes_silent_ends_with_an_error_event_after_the_read_timeout() -> None:
    replica = _replica(lambda r: sse([CHUNK, b": still thinking\n"], end="hang"))
    async with running(replica), gateway({"inference-gguf": [replica.url]}, read_timeout_s=0.3) as client:
        response = await client.post("/v1/chat/completions", content=chat(stream=True))
    events = [e for e in response.content.split(b"\n\n") if e]
    assert events[0] + b"\n\n" == CHUNK
    assert b"no data for 0.3s" in events[1] and b"stream_interrupted" in events[1]
    assert events[2] == b"data: [DONE]"
