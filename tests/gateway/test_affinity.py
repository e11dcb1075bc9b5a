"""Session affinity with two replicas: two real fake-replica servers on loopback, the real gateway, the real history
service (SQLite subprocess, sessions need it). Each replica answers with its own name, so an answer says where it
was served. A session's requests stay on one replica; they fall back to the other when it is down, saturated (as
many requests in flight there as GATEWAY_AFFINITY_MAX_IN_FLIGHT), or answers 429; ``gateway_affinity_total``
counts hits and fallbacks."""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.gateway.fakes import Replica, Reply, Seen, chat, completion, gateway, model_replica, running
from tests.services import Service


def _served(answer: httpx.Response) -> str:
    assert answer.status_code == 200, answer.text
    content: str = answer.json()["choices"][0]["message"]["content"]
    return content


async def _turn(client: httpx.AsyncClient, session: str) -> httpx.Response:
    return await client.post("/v1/chat/completions", content=chat(), headers={"X-Session-ID": session})


def _affinity(metrics: str) -> dict[str, float]:
    found = re.findall(r'gateway_affinity_total\{model="m1",result="(\w+)"\} (\S+)', metrics)
    return {result: float(value) for result, value in found}


async def test_a_sessions_turns_stay_on_one_replica_and_sessions_spread_over_both(history: Service) -> None:
    a, b = model_replica(answer="a"), model_replica(answer="b")
    sessions = [f"spread-{i}" for i in range(16)]
    async with running(a, b), gateway({"inference-gguf": [a.url, b.url]}, history_url=history.url) as client:
        served = {s: [_served(await _turn(client, s)) for _ in range(3)] for s in sessions}
        plain = [_served(await client.post("/v1/chat/completions", content=chat())) for _ in range(4)]
        metrics = (await client.get("/metrics")).text
    assert all(len(set(turns)) == 1 for turns in served.values()), served
    homes = [turns[0] for turns in served.values()]
    assert 0 < homes.count("a") < len(sessions)  # rendezvous hashing spreads the sessions
    assert sorted(plain) == ["a", "a", "b", "b"]  # no session: least busy, ties rotate
    assert _affinity(metrics) == {"hit": 3 * len(sessions)}


async def test_a_session_falls_back_when_its_replica_is_down_and_returns_when_it_is_back(history: Service) -> None:
    a, b = model_replica(answer="a"), model_replica(answer="b")
    replicas = {"a": a, "b": b}
    async with (
        running(a, b),
        gateway({"inference-gguf": [a.url, b.url]}, history_url=history.url, refresh_interval_s=0.2) as client,
    ):
        session = "down-1"
        home = _served(await _turn(client, session))
        await replicas[home].stop()
        away = [_served(await _turn(client, session)) for _ in range(2)]
        await replicas[home].start()
        await asyncio.sleep(0.6)  # the next refresh reads it again
        back = _served(await _turn(client, session))
        metrics = (await client.get("/metrics")).text
    assert away == [{"a": "b", "b": "a"}[home]] * 2
    assert back == home
    assert _affinity(metrics) == {"hit": 2, "fallback": 2}


async def test_a_saturated_replica_sends_the_session_elsewhere(history: Service) -> None:
    """Saturated: two requests already in flight there (GATEWAY_AFFINITY_MAX_IN_FLIGHT=2), or a 429 answer."""
    release, arrived = asyncio.Event(), asyncio.Event()
    busy = {"a": False, "b": False}
    waiting: list[str] = []

    def replica(name: str) -> Replica:
        async def answer(seen: Seen) -> Reply:
            if busy[name]:
                return Reply(status=429, payload={"error": {"message": "queue full"}}, headers={"Retry-After": "1"})
            waiting.append(name)
            if len(waiting) == 4:  # the first turn, then the three concurrent ones
                arrived.set()
            await release.wait()
            return completion(name)

        card = {"id": "m1", "object": "model", "created": 0, "owned_by": "inference-gguf", "context_length": 4096}
        return (
            Replica()
            .on("/v1/models", lambda r: Reply(payload={"object": "list", "data": [card]}))
            .on("/v1/chat/completions", answer)
        )

    a, b = replica("a"), replica("b")
    settings = {"history_url": history.url, "affinity_max_in_flight": 2}
    async with running(a, b), gateway({"inference-gguf": [a.url, b.url]}, **settings) as client:
        session = "saturated-1"
        release.set()
        home = _served(await _turn(client, session))
        other = {"a": "b", "b": "a"}[home]
        release.clear()
        turns = [asyncio.create_task(_turn(client, session)) for _ in range(3)]
        await asyncio.wait_for(arrived.wait(), 10)  # all three are at a replica, none answered yet
        release.set()
        concurrent = sorted([_served(await t) for t in turns])
        busy[home] = True  # its queue is full: it answers 429
        refused = _served(await _turn(client, session))
        metrics = (await client.get("/metrics")).text
    assert concurrent == sorted([home, home, other])
    assert refused == other
    assert _affinity(metrics) == {"hit": 3, "fallback": 2}
