"""The gateway's overhead: the same load sent straight to a zero-latency upstream and through the gateway.

    make bench            # or: .venv/bin/python bench/gateway_overhead.py [--rounds 3] [--requests 300]

Starts ``bench/fake_upstream.py``, the real gateway (default settings, pointed at the fake) and
``bench/bare_proxy.py`` (a pass-through on the gateway's server and client libraries that does nothing
else) as subprocesses, then for concurrency 1 and 32, streaming and not, sends the same requests
straight to the fake, through the bare proxy and through the gateway. The passes alternate over
several rounds so that drift on a shared machine hits all three. Prints p50/p99 latency, p50 time to
first byte and requests/s for each, the two target ratios, and the gateway's throughput as a share of
the bare proxy's (what the gateway's own work costs, apart from its libraries).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import describe
from tests.services import free_port, start_service

PATHS = ("direct", "bare", "gateway")  # straight to the fake upstream, through bench/bare_proxy.py, through the gateway
BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 16}


@dataclass
class Samples:
    latency: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, other: Samples) -> None:
        self.latency += other.latency
        self.ttfb += other.ttfb
        self.elapsed += other.elapsed

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latency)
        return {
            "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
            "ttfb_p50_ms": statistics.median(self.ttfb) * 1000,
            "rps": len(lat) / self.elapsed,
            "requests": len(lat),
        }


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, samples: Samples, headers: dict[str, str] | None = None
) -> None:
    started = time.perf_counter()
    async with session.post(
        url, data=body, headers={"Content-Type": "application/json", **(headers or {})}
    ) as response:
        first = await response.content.readany()
        samples.ttfb.append(time.perf_counter() - started)
        rest = await response.read()
        if response.status != 200 or not (first + rest):
            raise RuntimeError(f"{url}: HTTP {response.status}")
    samples.latency.append(time.perf_counter() - started)


async def run_load(
    base: str, *, stream: bool, concurrency: int, requests: int, headers: dict[str, str] | None = None
) -> Samples:
    url = f"{base}/v1/chat/completions"
    body = json.dumps({**BODY, "stream": stream}, separators=(",", ":")).encode()
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    samples = Samples()
    async with aiohttp.ClientSession(connector=connector) as session:
        for _ in range(concurrency):  # warm the connections
            await _one(session, url, body, Samples(), headers)
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await _one(session, url, body, samples, headers)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        samples.elapsed = time.perf_counter() - started
    return samples


def gc_collections(base: str) -> list[float]:
    """The gateway's garbage-collection passes so far, by generation, from its /metrics page."""
    text = httpx.get(f"{base}/metrics", timeout=10).text
    prefix = "python_gc_collections_total{generation="
    return [float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="requests per pass at concurrency 1")
    parser.add_argument("--requests-concurrent", type=int, default=1600, help="requests per pass at 32")
    parser.add_argument("--chunks", type=int, default=16, help="SSE chunks per streamed answer")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    up_port, gw_port, bare_port = free_port(), free_port(), free_port()
    scenarios = [(1, False), (1, True), (32, False), (32, True)]
    totals = {(target, c, s): Samples() for target in PATHS for c, s in scenarios}
    with ExitStack() as running:  # whatever started is stopped, also when a later start fails
        fake = start_service(
            "fake-upstream",
            ["bench/fake_upstream.py", "--port", str(up_port), "--chunks", str(args.chunks)],
            {},
            up_port,
            logs,
        )
        running.callback(fake.stop)
        gateway = start_service(
            "gateway",
            ["-m", "gateway"],
            {"GATEWAY_PORT": str(gw_port), "GATEWAY_SERVICES": json.dumps({"inference-fake": [fake.url]})},
            gw_port,
            logs,
        )
        running.callback(gateway.stop)
        bare = start_service(
            "bare-proxy", ["bench/bare_proxy.py", "--port", str(bare_port), "--upstream", fake.url], {}, bare_port, logs
        )
        running.callback(bare.stop)
        gc_before = gc_collections(gateway.url)
        for round_ in range(args.rounds):
            for concurrency, stream in scenarios:
                n = args.requests if concurrency == 1 else args.requests_concurrent
                order = [("direct", fake.url), ("bare", bare.url), ("gateway", gateway.url)]
                if round_ % 2:
                    order.reverse()
                for target, base in order:
                    samples = asyncio.run(run_load(base, stream=stream, concurrency=concurrency, requests=n))
                    totals[(target, concurrency, stream)].add(samples)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        gc_passes = [after - before for before, after in zip(gc_before, gc_collections(gateway.url), strict=True)]

    rows = []
    for concurrency, stream in scenarios:
        by = {target: totals[(target, concurrency, stream)].summary() for target in PATHS}
        direct, bare_proxy, via = by["direct"], by["bare"], by["gateway"]
        rows.append(
            {
                "concurrency": concurrency,
                "stream": stream,
                **by,
                "added_p50_ms": via["p50_ms"] - direct["p50_ms"],
                "rps_ratio": via["rps"] / direct["rps"],
                "bare_rps_ratio": bare_proxy["rps"] / direct["rps"],
                "rps_of_bare": via["rps"] / bare_proxy["rps"],
            }
        )

    print(f"\nmachine: {describe()}")
    print(f"{args.rounds} rounds; {args.chunks} SSE chunks per streamed answer\n")
    print("| concurrency | stream | path | p50 ms | p99 ms | TTFB p50 ms | req/s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        for target in PATHS:
            s = row[target]
            print(
                f"| {row['concurrency']} | {'yes' if row['stream'] else 'no'} | {target} | {s['p50_ms']:.3f} | "
                f"{s['p99_ms']:.3f} | {s['ttfb_p50_ms']:.3f} | {s['rps']:.0f} |"
            )
    print()
    for row in rows:
        print(
            f"concurrency {row['concurrency']:>2}, stream={row['stream']!s:5}: added p50 "
            f"{row['added_p50_ms']:.3f} ms, throughput vs direct: gateway {row['rps_ratio']:.2f}x, "
            f"bare proxy {row['bare_rps_ratio']:.2f}x; gateway/bare proxy {row['rps_of_bare']:.2f}x"
        )
    served = sum(len(totals[("gateway", c, s)].latency) for c, s in scenarios)
    print(
        f"gateway garbage-collection passes over its {served} measured requests (and the warm-up ones): "
        + ", ".join(f"generation {g}: {n:.0f}" for g, n in enumerate(gc_passes))
    )
    c1 = [r for r in rows if r["concurrency"] == 1]
    c32_stream = next(r for r in rows if r["concurrency"] == 32 and r["stream"])
    worst_added = max(r["added_p50_ms"] for r in c1)
    print(
        f"\ntarget added p50 at concurrency 1 <= 1 ms: {worst_added:.3f} ms "
        f"({'met' if worst_added <= 1 else 'NOT met'})"
    )
    print(
        f"target streaming throughput at concurrency 32 >= 0.5x direct: {c32_stream['rps_ratio']:.2f}x "
        f"({'met' if c32_stream['rps_ratio'] >= 0.5 else 'NOT met'})"
    )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
