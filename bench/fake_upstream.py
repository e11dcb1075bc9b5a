"""A zero-latency OpenAI-compatible upstream: the baseline the gateway's overhead is measured against.

A bare ASGI app under uvicorn (the same server stack the services use) that answers
``GET /v1/models`` and ``POST /v1/chat/completions`` at once — ``--chunks`` SSE chunks when streaming.

    python bench/fake_upstream.py --port 9001 --chunks 16
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson
import uvicorn

MODEL = "fake-model"


def build_app(chunks: int, think: int = 0) -> Any:
    """``think`` > 0: a streamed answer's first ``think`` chunks are reasoning, between <think> tags."""
    models = orjson.dumps(
        {
            "object": "list",
            "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "fake-upstream", "context_length": 4096}
            ],
        }
    )
    completion = orjson.dumps(
        {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
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

    def chunk(delta: dict[str, str], finish: str | None) -> bytes:
        return (
            b"data: "
            + orjson.dumps(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": MODEL,
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
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
            for event in events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
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
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.chunks, args.think),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
