"""A zero-latency OpenAI-compatible upstream: the baseline the gateway's overhead is measured against.

A bare ASGI app under uvicorn (the same server stack the services use) that answers
``GET /v1/models`` and ``POST /v1/chat/completions`` at once — ``--chunks`` SSE chunks when streaming.
``--filter``: it advertises and applies a pushed-down answer filter (``switchboard_filter``) as the model
services do, with the same code (:class:`chat_common.answer_filter.StreamShaper`).

    python bench/fake_upstream.py --port 9001 --chunks 16 [--model fake-model] [--filter]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
from typing import Any

import orjson
import uvicorn

from chat_common.answer_filter import FILTER_FIELD, FILTER_HEADER, FILTER_VERSION, FilterSpec, StreamShaper

MODEL = "fake-model"


def build_app(chunks: int, think: int = 0, model: str = MODEL, answer_filter: bool = False, pace_s: float = 0.0) -> Any:
    """``think`` > 0: a streamed answer's first ``think`` chunks are reasoning, between <think> tags.
    ``answer_filter``: apply a request's ``switchboard_filter`` (and say so in the model card).
    ``pace_s`` > 0: that long between a stream's events, as a model decoding token by token (each event
    then reaches the gateway on its own instead of several at once)."""
    card: dict[str, Any] = {"id": model, "object": "model", "created": 0, "owned_by": "fake-upstream"}
    card["context_length"] = 4096
    if answer_filter:
        card[FILTER_FIELD] = FILTER_VERSION
    models = orjson.dumps({"object": "list", "data": [card]})
    completion = orjson.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "tok " * chunks},
                    "finish_reason": "stop",
                    "logprobs": None,
                }
            ],
            "usage": {"prompt_tokens": 8, "completion_tokens": chunks, "total_tokens": 8 + chunks},
        }
    )

    def chunk(delta: dict[str, str], finish: str | None, name: str = model) -> bytes:
        return (
            b"data: "
            + orjson.dumps(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
                }
            )
            + b"\n\n"
        )

    events = [chunk({"role": "assistant", "content": ""}, None)]
    pieces = ["tok "] * chunks
    if think:
        pieces[0] = "<think>" + pieces[0]
        pieces[min(think, chunks) - 1] += "</think>"
    events += [chunk({"content": piece}, None) for piece in pieces]
    events += [chunk({}, "stop"), b"data: [DONE]\n\n"]

    @functools.cache
    def shaped(spec: bytes) -> list[bytes]:
        """The stream a model service sends for the filter ``spec``, built once per filter: sent as fast as
        the plain answer, so that a gateway relaying either receives its events in the same pieces (the
        service's own cost of the filter is measured apart, bench/profile_filter.py)."""
        return filtered(FilterSpec.model_validate_json(spec))

    def filtered(spec: FilterSpec) -> list[bytes]:
        """The stream a model service sends for ``spec`` (the same code as the services)."""
        name = spec.answer_model or model
        shaper = StreamShaper(spec)
        out = [chunk(shaper.role, None, name)]
        for piece in pieces:
            out += [chunk(delta, finish, name) for delta, finish in shaper.feed(piece)]
            if shaper.blocked:
                return [*out, b"data: [DONE]\n\n"]
        out += [chunk(delta, finish, name) for delta, finish in shaper.finish()]
        return [*out, chunk({}, "stop", name), b"data: [DONE]\n\n"]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_body(receive)
        path = scope["path"]
        if path in ("/v1/models", "/ready", "/health"):
            await _send(send, 200, b"application/json", models)
        elif path == "/v1/chat/completions" and b'"stream":true' in body.replace(b" ", b""):
            headers = [(b"content-type", b"text/event-stream")]
            answer = events
            if answer_filter and FILTER_FIELD.encode() in body:
                answer = shaped(orjson.dumps(orjson.loads(body)[FILTER_FIELD]))
                headers.append((FILTER_HEADER.encode(), b"1"))
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            for event in answer:
                await send({"type": "http.response.body", "body": event, "more_body": True})
                if pace_s:
                    await asyncio.sleep(pace_s)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif path == "/v1/chat/completions":
            await _send(send, 200, b"application/json", completion)
        else:
            await _send(send, 404, b"application/json", b'{"error":{"message":"not found"}}')

    return app


async def read_body(receive: Any) -> bytes:
    """A request's whole body (also used by ``bench/bare_proxy.py``)."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _send(send: Any, status: int, content_type: bytes, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--think", type=int, default=0, help="streamed chunks of reasoning, in <think> tags")
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--filter", action="store_true", help="apply a pushed-down answer filter")
    parser.add_argument("--pace-ms", type=float, default=0.0, help="milliseconds between a stream's events")
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.chunks, args.think, args.model, args.filter, args.pace_ms / 1000),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
