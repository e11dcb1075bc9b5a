"""The circuit breaker under load: real replicas on loopback (aiohttp servers), the real gateway and its upstream
client.

Among healthy replicas, one replica hangs (accepts the request, never answers within GATEWAY_READ_TIMEOUT_S) and one
answers 500s; both keep answering ``/v1/models``, as a wedged engine behind a live HTTP server does, so only the
breaker can take them out. Many concurrent client requests must lose at most one request per failing replica (the
gateway retries a timeout or a 5xx once on another replica), the breaker must open for both, and after the cool-down
the half-open probe must bring a recovered replica back while a still-broken one stays out.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from tests.gateway.fakes import Replica, Reply, Seen, chat, completion, gateway, models, running

CONCURRENCY = 40
REQUESTS = 240


@dataclass
class Fault:
    """What a faulty replica does with a chat request; ``broken`` False makes it answer normally."""

    kind: str  # "hang" or "500"
    broken: bool = True

    def __call__(self, seen: Seen) -> Reply:
        if not self.broken:
            return completion("recovered")
        if self.kind == "hang":
            return Reply(delay_s=3600, payload=None)  # the handler ends when the gateway drops the connection
        return Reply(status=500, payload={"error": {"message": "engine crashed", "type": "server_error"}})


def _replica(answer: str) -> Replica:
    return Replica().on("/v1/models", lambda r: models("m1")).on("/v1/chat/completions", lambda r: completion(answer))


def _faulty(fault: Fault) -> Replica:
    return Replica().on("/v1/models", lambda r: models("m1")).on("/v1/chat/completions", fault)


async def _load(client: httpx.AsyncClient, total: int, concurrency: int) -> list[httpx.Response]:
    gate = asyncio.Semaphore(concurrency)

    async def one() -> httpx.Response:
        async with gate:
            return await client.post("/v1/chat/completions", content=chat())

    return list(await asyncio.gather(*(one() for _ in range(total))))


async def test_a_hanging_and_a_failing_replica_cost_at_most_one_request_each_under_load() -> None:
    healthy = [_replica(f"healthy-{i}") for i in range(3)]
    hang, fail = Fault("hang"), Fault("500")
    hanging, failing = _faulty(hang), _faulty(fail)
    replicas = [*healthy, hanging, failing]
    async with (
        running(*replicas),
        gateway(
            {"inference-gguf": [r.url for r in replicas]},
            read_timeout_s=0.5,
            breaker_threshold=3,
            breaker_cooldown_s=60,
            refresh_interval_s=3600,
        ) as client,
    ):
        answers = await _load(client, REQUESTS, CONCURRENCY)
        ready = (await client.get("/ready")).json()
        metrics = (await client.get("/metrics")).text

    failed = [a for a in answers if a.status_code != 200]
    # At most one failed client request per replica failure (two faulty replicas); with healthy replicas to
    # retry on, none should fail at all.
    assert len(failed) <= 2, [a.json() for a in failed]
    assert all(a.json()["choices"][0]["message"]["content"].startswith("healthy-") for a in answers if a.is_success)
    # Both faulty replicas were taken out: after the breaker opened, they saw no further request.
    tripped = {t["url"]: t for t in ready["tripped"]}
    assert set(tripped) == {hanging.url, failing.url}
    assert all(t["state"] == "open" for t in tripped.values())
    # The breaker opens after 3 consecutive failures; requests already on their way when it opened may
    # add to that, but not many more than the concurrency allows (and far fewer than their share).
    assert 3 <= len(failing.chat_requests()) < REQUESTS // 5
    assert 3 <= len(hanging.chat_requests()) < REQUESTS // 5
    assert sum(len(r.chat_requests()) for r in healthy) >= REQUESTS - len(failed)
    assert 'gateway_upstream_failures_total{reason="timeout",service="inference-gguf"}' in metrics
    assert 'gateway_upstream_failures_total{reason="status_5xx",service="inference-gguf"}' in metrics


async def test_the_half_open_probe_brings_a_recovered_replica_back_and_keeps_a_broken_one_out() -> None:
    healthy = _replica("healthy")
    hang, fail = Fault("hang"), Fault("500")
    hanging, failing = _faulty(hang), _faulty(fail)
    async with (
        running(healthy, hanging, failing),
        gateway(
            {"inference-gguf": [healthy.url, hanging.url, failing.url]},
            read_timeout_s=0.3,
            breaker_threshold=2,
            breaker_cooldown_s=2.0,
            refresh_interval_s=3600,
        ) as client,
    ):
        first = await _load(client, 60, 10)
        assert {t["url"] for t in (await client.get("/ready")).json()["tripped"]} == {hanging.url, failing.url}
        fail.broken = False  # the 500 replica recovers; the hanging one does not
        seen_hanging = len(hanging.chat_requests())
        await asyncio.sleep(2.2)  # the cool-down ends: both are half-open
        second = await _load(client, 60, 10)
        ready = (await client.get("/ready")).json()

    # At most one failed client request per failing replica while they fail (a request whose first replica
    # fails may be retried on the other faulty one before either breaker opened); none once they are out.
    assert len([a for a in first if a.is_error]) <= 2, [a.text for a in first if a.is_error]
    assert all(a.status_code == 200 for a in second), [a.text for a in second if a.is_error]
    # The recovered replica's probe succeeded and closed its breaker: it took its share of the load again.
    assert any(a.json()["choices"][0]["message"]["content"] == "recovered" for a in second)
    assert len(failing.chat_requests()) > 10
    # The hanging one got exactly one probe in the half-open state; the probe timed out and re-opened it.
    assert len(hanging.chat_requests()) == seen_hanging + 1
    assert [t["url"] for t in ready["tripped"]] == [hanging.url]
