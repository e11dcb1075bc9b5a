from __future__ import annotations

import httpx2 as httpx
import orjson
import pytest

from tests.gateway.fakes import Upstream, chat, completion, gateway, models

GGUF = "http://gguf:8001"


def _upstream(chat_handler=None) -> Upstream:  # type: ignore[no-untyped-def]
    upstream = Upstream()
    upstream.on(f"{GGUF}/v1/models", lambda r: models("m1", "m2"))
    upstream.on(f"{GGUF}/v1/chat/completions", chat_handler or (lambda r: completion()))
    return upstream


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
        body: bytes, status: int, fragment: str) -> None:
    upstream = _upstream()
    async with gateway(upstream, {"inference-gguf": [GGUF]}) as client:
        response = await client.post("/v1/chat/completions", content=body)
    assert response.status_code == status
    assert fragment in response.json()["error"]["message"]
    assert upstream.chat_requests() == []


async def test_oversized_body_is_413() -> None:
    upstream = _upstream()
    async with gateway(upstream, {"inference-gguf": [GGUF]}, max_body_bytes=2048) as client:
        declared = await client.post("/v1/chat/completions", content=chat(pad="x" * 4000))

        async def chunks():  # no Content-Length: counted while reading
            for _ in range(5):
                yield b" " * 1000

        streamed = await client.post("/v1/chat/completions", content=chunks())
    assert declared.status_code == streamed.status_code == 413
    assert "GATEWAY_MAX_BODY_BYTES" in declared.json()["error"]["message"]
    assert upstream.chat_requests() == []


async def test_service_down_is_503_naming_it() -> None:
    upstream = _upstream()
    async with gateway(upstream, {"inference-gguf": [GGUF]}) as client:
        del upstream.routes[("gguf:8001", "/v1/chat/completions")]  # now refuses connections
        response = await client.post("/v1/chat/completions", content=chat())
    assert response.status_code == 503
    message = response.json()["error"]["message"]
    assert "inference-gguf" in message and "http://gguf:8001" in message


async def test_service_timeout_is_503_naming_it() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    async with gateway(_upstream(slow), {"inference-gguf": [GGUF]}, read_timeout_s=7) as client:
        response = await client.post("/v1/chat/completions", content=chat())
    assert response.status_code == 503
    assert "inference-gguf" in response.json()["error"]["message"]
    assert "7s" in response.json()["error"]["message"]


class _CutStream(httpx.AsyncByteStream):
    def __init__(self, parts: list[bytes], error: Exception | None) -> None:
        self.parts, self.error = parts, error

    async def __aiter__(self):  # type: ignore[no-untyped-def]
        for part in self.parts:
            yield part
        if self.error:
            raise self.error


def _sse(parts: list[bytes], error: Exception | None = None) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=_CutStream(parts, error))


CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n'


async def test_stream_passes_through_byte_for_byte() -> None:
    parts = [CHUNK[:10], CHUNK[10:] + CHUNK, b"data: [DONE]\n\n"]
    async with gateway(_upstream(lambda r: _sse(parts)), {"inference-gguf": [GGUF]}) as client:
        response = await client.post("/v1/chat/completions", content=chat(stream=True))
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.content == b"".join(parts)


@pytest.mark.parametrize("error", [httpx.RemoteProtocolError("peer closed connection"), None])
async def test_a_stream_cut_short_ends_with_an_error_event_and_done(error: Exception | None) -> None:
    parts = [CHUNK, CHUNK[:25]]  # the second event is incomplete when the upstream goes away
    async with gateway(_upstream(lambda r: _sse(parts, error)), {"inference-gguf": [GGUF]}) as client:
        response = await client.post("/v1/chat/completions", content=chat(stream=True))
    events = [e for e in response.content.split(b"\n\n") if e]
    assert events[0] + b"\n\n" == CHUNK
    error_event = orjson.loads(events[1].removeprefix(b"data: "))
    assert error_event["error"]["code"] == "stream_interrupted"
    assert "inference-gguf" in error_event["error"]["message"]
    assert events[2] == b"data: [DONE]"
    assert len(events) == 3
    assert b'"finish_reason":"stop"' not in response.content
