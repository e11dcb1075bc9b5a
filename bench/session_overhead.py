"""What a session costs the gateway: the same requests with and without a session id, in one run.

    .venv/bin/python bench/session_overhead.py [--requests 300]

Starts ``bench/fake_upstream.py`` (zero-latency model), the history service on a fresh SQLite file and
the gateway. At concurrency 1, streaming and not, sends requests without a session and requests that
all continue one session (so each reads up to 20 stored messages and stores two more), alternating
passes. Prints p50 time to first byte and p50 total latency for both, and the difference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.services import free_port, start_service


async def load(url: str, *, stream: bool, session: str | None, n: int) -> tuple[list[float], list[float]]:
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "Hello there"}], "stream": stream}
    if session:
        body["session_id"] = session
    data = json.dumps(body).encode()
    ttfb, total = [], []
    async with aiohttp.ClientSession() as client:
        for _ in range(n):
            started = time.perf_counter()
            async with client.post(url, data=data, headers={"Content-Type": "application/json"}) as response:
                await response.content.readany()
                ttfb.append(time.perf_counter() - started)
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}")
            total.append(time.perf_counter() - started)
    return ttfb, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="bench-session-"))
    up, hist, gw = free_port(), free_port(), free_port()
    fake = start_service("fake-upstream", ["bench/fake_upstream.py", "--port", str(up)], {}, up, logs)
    history = start_service(
        "history",
        ["-m", "history"],
        {"HISTORY_PORT": str(hist), "HISTORY_SQLITE_PATH": str(logs / "history.sqlite3")},
        hist,
        logs,
    )
    gateway = start_service(
        "gateway",
        ["-m", "gateway"],
        {
            "GATEWAY_PORT": str(gw),
            "GATEWAY_SERVICES": json.dumps({"inference-fake": [fake.url]}),
            "GATEWAY_HISTORY_URL": history.url,
        },
        gw,
        logs,
    )
    url = f"{gateway.url}/v1/chat/completions"
    figures: dict[tuple[bool, bool], tuple[list[float], list[float]]] = {}
    try:
        for round_ in range(args.rounds):
            for stream in (False, True):
                for with_session in (False, True) if round_ % 2 == 0 else (True, False):
                    session = f"bench-{'s' if stream else 'n'}" if with_session else None
                    ttfb, total = asyncio.run(load(url, stream=stream, session=session, n=args.requests))
                    got = figures.setdefault((stream, with_session), ([], []))
                    got[0].extend(ttfb)
                    got[1].extend(total)
    finally:
        for service in (gateway, history, fake):
            service.stop()
    print("| stream | session | TTFB p50 ms | latency p50 ms |\n|---|---|---|---|")
    for (stream, with_session), (ttfb, total) in sorted(figures.items()):
        print(
            f"| {'yes' if stream else 'no'} | {'yes' if with_session else 'no'} | "
            f"{statistics.median(ttfb) * 1000:.2f} | {statistics.median(total) * 1000:.2f} |"
        )
    for stream in (False, True):
        plain, session = figures[(stream, False)], figures[(stream, True)]
        first = 1000 * (statistics.median(session[0]) - statistics.median(plain[0]))
        whole = 1000 * (statistics.median(session[1]) - statistics.median(plain[1]))
        print(f"stream={stream}: a session adds {first:.2f} ms to the first byte, {whole:.2f} ms to the whole answer")


if __name__ == "__main__":
    main()
