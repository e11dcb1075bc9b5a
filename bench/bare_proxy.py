"""The least a proxy on the gateway's stack can do: the ceiling for the gateway's throughput.

A bare ASGI app under uvicorn that forwards every POST to one upstream with a pooled aiohttp session
(the gateway's server and client libraries, with its connection and timeout settings) and relays the
answer's bytes as they arrive. It does nothing else: no validation, routing, request ids, access log,
metrics or disconnect handling. ``bench/gateway_overhead.py`` measures it beside the gateway, so the
figures separate what the server and client libraries cost from what the gateway's own work costs.

    python bench/bare_proxy.py --port 9002 --upstream http://127.0.0.1:9001
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import aiohttp
import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.fake_upstream import read_body
from gateway.config import Settings

_GATEWAY = {name: field.default for name, field in Settings.model_fields.items()}  # the gateway's defaults


def build_app(upstream: str) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(
                        limit=_GATEWAY["max_upstream_connections"], limit_per_host=0, keepalive_timeout=4
                    ),
                    timeout=aiohttp.ClientTimeout(
                        total=None, connect=_GATEWAY["connect_timeout_s"], sock_read=_GATEWAY["read_timeout_s"]
                    ),
                    cookie_jar=aiohttp.DummyCookieJar(),
                )
                await send({"type": "lifespan.startup.complete"})
            if session is not None:
                await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = await read_body(receive)
        if scope["method"] != "POST":  # readiness probe
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        assert session is not None
        async with session.post(
            upstream + scope["path"], data=body, headers={"Content-Type": "application/json"}
        ) as response:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [(b"content-type", response.headers["Content-Type"].encode())],
                }
            )
            async for piece in response.content.iter_any():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(
        build_app(args.upstream.rstrip("/")),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )


if __name__ == "__main__":
    main()
