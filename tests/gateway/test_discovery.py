"""Replica discovery: one service URL whose host name resolves to several addresses is several replicas.

A real DNS server (dnslib, on a free UDP port of 127.0.0.1) answers for the name; the gateway resolves it through
its real resolver path (aiohttp's c-ares resolver, GATEWAY_DNS_NAMESERVERS pointed at that server) and reaches real
replicas listening on 127.0.0.2, 127.0.0.3, 127.0.0.4 (all loopback on Linux) on one port, as containers of
`docker compose --scale` or the pods of a headless Service do on theirs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from dnslib import QTYPE, RR, A
from dnslib.server import BaseResolver, DNSServer

from tests.gateway.fakes import Replica, Reply, chat, completion, dead_url, gateway, models
from tests.services import free_port

NAME = "inference-gguf.switchboard.test"


class Zone(BaseResolver):  # type: ignore[misc]
    """Answers A queries for NAME with whatever ``addresses`` holds at the time (TTL 0: resolvers must not cache it)."""

    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.queries = 0

    def resolve(self, request, handler):  # type: ignore[no-untyped-def]
        reply = request.reply()
        if str(request.q.qname).rstrip(".") == NAME:
            self.queries += 1
            if QTYPE[request.q.qtype] == "A":
                for address in self.addresses:
                    reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(address), ttl=0))
        return reply


@pytest.fixture
def dns() -> Iterator[tuple[Zone, str]]:
    zone = Zone()
    server = DNSServer(zone, address="127.0.0.1", port=0, logger=_Quiet())
    server.start_thread()
    try:
        yield zone, f"127.0.0.1:{server.server.server_address[1]}"
    finally:
        server.stop()
        server.server.server_close()


class _Quiet:
    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return lambda *args, **kwargs: None


def _replicas(port: int, *hosts: str) -> list[Replica]:
    def answer(host: str) -> Replica:
        return (
            Replica(host, port)
            .on("/v1/models", lambda r: models("m1"))
            .on("/v1/chat/completions", lambda r: completion(host))
        )

    return [answer(h) for h in hosts]


async def _start(replicas: list[Replica]) -> None:
    for replica in replicas:
        await replica.start()


async def test_a_name_with_several_addresses_is_one_replica_per_address(dns: tuple[Zone, str]) -> None:
    zone, nameserver = dns
    port = free_port()
    replicas = _replicas(port, "127.0.0.2", "127.0.0.3", "127.0.0.4")
    zone.addresses = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
    await _start(replicas)
    try:
        async with gateway(
            {"inference-gguf": [f"http://{NAME}:{port}"]}, dns_nameservers=[nameserver], refresh_interval_s=3600
        ) as client:
            ready = (await client.get("/ready")).json()
            answers = [(await client.post("/v1/chat/completions", content=chat())).json() for _ in range(6)]
    finally:
        for replica in replicas:
            await replica.stop()
    assert ready["unreachable"] == [] and zone.queries >= 1
    # Each container is its own replica: least-busy routing with rotating ties spreads over all three.
    assert sorted(a["choices"][0]["message"]["content"] for a in answers) == sorted(zone.addresses * 2)
    assert [len(r.chat_requests()) for r in replicas] == [2, 2, 2]


async def test_replicas_follow_the_name_on_every_refresh(dns: tuple[Zone, str]) -> None:
    """Scaling up adds a replica, scaling down drops one, at the next refresh; a dead name says why."""
    zone, nameserver = dns
    port = free_port()
    replicas = _replicas(port, "127.0.0.2", "127.0.0.3")
    zone.addresses = ["127.0.0.2"]
    await _start(replicas)
    try:
        async with gateway(
            {"inference-gguf": [f"http://{NAME}:{port}"]}, dns_nameservers=[nameserver], refresh_interval_s=0.2
        ) as client:
            first = [(await client.post("/v1/chat/completions", content=chat())).json() for _ in range(2)]
            zone.addresses = ["127.0.0.2", "127.0.0.3"]  # `--scale inference-gguf=2`
            await asyncio.sleep(0.6)
            both = [(await client.post("/v1/chat/completions", content=chat())).json() for _ in range(4)]
            zone.addresses = ["127.0.0.3"]  # the first container went away
            await asyncio.sleep(0.6)
            last = [(await client.post("/v1/chat/completions", content=chat())).json() for _ in range(2)]
            zone.addresses = []
            await asyncio.sleep(0.6)
            gone = await client.get("/ready")
    finally:
        for replica in replicas:
            await replica.stop()

    def served(answers: list[dict]) -> set[str]:
        return {a["choices"][0]["message"]["content"] for a in answers}

    assert served(first) == {"127.0.0.2"}
    assert served(both) == {"127.0.0.2", "127.0.0.3"}
    assert served(last) == {"127.0.0.3"}
    assert gone.status_code == 503
    assert f"cannot resolve http://{NAME}:{port}" in gone.json()["error"]["message"]


async def test_load_reaches_every_discovered_replica(dns: tuple[Zone, str]) -> None:
    zone, nameserver = dns
    port = free_port()
    loaded: list[str] = []

    def replica(host: str) -> Replica:
        def load(seen: object) -> object:
            loaded.append(host)
            from tests.gateway.fakes import Reply

            return Reply(payload={"id": "m1", "object": "model", "state": "loaded"})

        return Replica(host, port).on("/v1/models", lambda r: models("m1")).on("/v1/models/m1/load", load)

    replicas = [replica(h) for h in ("127.0.0.2", "127.0.0.3")]
    zone.addresses = ["127.0.0.2", "127.0.0.3"]
    await _start(replicas)
    try:
        async with gateway({"inference-gguf": [f"http://{NAME}:{port}"]}, dns_nameservers=[nameserver]) as client:
            response = await client.post("/v1/models/m1/load")
    finally:
        for r in replicas:
            await r.stop()
    assert response.status_code == 200, response.text
    assert sorted(loaded) == ["127.0.0.2", "127.0.0.3"]
    assert len(response.json()["replicas"]) == 2


async def test_a_scaled_helper_service_is_asked_in_turn_and_a_gone_container_is_skipped(dns: tuple[Zone, str]) -> None:
    """GATEWAY_RETRIEVER_URL naming `retriever-read` scaled to two containers: the gateway's requests to the
    retriever alternate between them; one that stops is skipped (its connection is refused) without an error."""
    zone, nameserver = dns
    port = free_port()
    vectors = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.0]}], "model": "e"}
    readers = [
        Replica(host, port).on("/v1/embeddings", lambda r: Reply(payload=vectors))
        for host in ("127.0.0.2", "127.0.0.3")
    ]
    zone.addresses = ["127.0.0.2", "127.0.0.3"]
    await _start(readers)
    body = {"input": "hello"}
    try:
        async with gateway(
            {"inference-gguf": [dead_url()]},
            retriever_url=f"http://{NAME}:{port}",
            dns_nameservers=[nameserver],
            refresh_interval_s=3600,
        ) as client:
            spread = [(await client.post("/v1/embeddings", json=body)).status_code for _ in range(6)]
            counts = [len(r.seen) for r in readers]
            await readers[0].stop()
            after = [(await client.post("/v1/embeddings", json=body)).status_code for _ in range(4)]
    finally:
        for reader in readers:
            await reader.stop()
    assert spread == [200] * 6 and counts == [3, 3]
    assert after == [200] * 4 and len(readers[1].seen) == 3 + 4
