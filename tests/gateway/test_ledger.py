"""The batched Redis work of the rate limits and the cache (gateway.ledger, gateway/limits.lua) against a real
Redis (the session's private server, tests/conftest.py; one of the test's own where it is paused): what goes out
in how many script calls (Redis's own command counters: a loop turn's admissions in one call, those that come
while a call is in flight in the next one), that a request sees the settlements queued before it, that
settlements go out by themselves when no request comes, that a client leaving while it waits gets its token
estimate back, and the cache's entry format (gateway.cache_entry)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from gateway.cache_entry import Recording, decode, stream_entry, whole_entry
from gateway.ledger import Ledger, LimitKey
from gateway.resp import fast_connection_for
from scripts.local_redis import LocalRedis


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def ledger(redis: Redis) -> AsyncIterator[Ledger]:
    fast = fast_connection_for(redis)
    assert fast is not None
    ledger = Ledger(redis, fast, settle_delay_s=0.5)  # long enough that a test sees what is still queued
    yield ledger
    await ledger.drain()
    fast.close()


def limits(prefix: str, rpm: int = 100, tpm: int = 1000) -> tuple[LimitKey, ...]:
    return (LimitKey(f"{prefix}r".encode(), rpm, False), LimitKey(f"{prefix}t".encode(), tpm, True))


async def script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) + int(stats.get("cmdstat_eval", {}).get("calls", 0))


async def test_the_admissions_of_one_loop_turn_go_out_in_one_call_each_with_its_own_row(
    redis: Redis, ledger: Ledger, redis_prefix: str
) -> None:
    plan = limits(redis_prefix, rpm=10)
    await ledger.admit(plan, 5, None)  # the script loaded and the connection open before counting
    before = await script_calls(redis)
    rows = await asyncio.gather(*(ledger.admit(plan, 5, None) for _ in range(12)))
    assert await script_calls(redis) - before == 1
    # in order, each seeing the ones before it: 9 requests were left of 10, then none
    assert [row[0] for row in rows] == [1] * 9 + [0] * 3
    assert [row[1] for row in rows[:9]] == list(range(8, -1, -1))  # requests remaining after each
    assert rows[-1][3] > 0  # a refused one is told how long to wait


async def test_admissions_that_come_while_a_call_is_in_flight_wait_and_share_the_next_call(
    private_redis: Callable[[], LocalRedis], redis_prefix: str
) -> None:
    server = private_redis()
    assert server.process is not None
    redis = Redis.from_url(server.url)
    fast = fast_connection_for(redis)
    ledger = Ledger(redis, fast)
    plan = limits(redis_prefix, rpm=10)
    await ledger.admit(plan, 1, None)
    before = await script_calls(redis)
    os.kill(server.process.pid, signal.SIGSTOP)  # the next call stays in flight
    try:
        first = ledger.admit(plan, 1, None)
        await asyncio.sleep(0.05)  # its loop turn ended: sent
        later = [ledger.admit(plan, 1, None) for _ in range(3)]
        await asyncio.sleep(0.05)  # their turn ended too, but a call is in flight: held
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
    rows = [await first, *[await f for f in later]]
    assert [row[1] for row in rows] == [8, 7, 6, 5]  # in order, each seeing the one before
    assert await script_calls(redis) - before == 2  # the first, then the three together
    assert fast is not None
    fast.close()
    await redis.aclose()


async def test_a_request_sees_the_corrections_queued_before_it_in_the_same_call(
    redis: Redis, ledger: Ledger, redis_prefix: str
) -> None:
    plan = limits(redis_prefix, tpm=1000)
    first = await ledger.admit(plan, 100, None)
    assert first[5] == 900  # tokens remaining after the estimate
    before = await script_calls(redis)
    tokens = plan[1:]  # one object for the plan's token limits, as a Plan keeps it
    ledger.settle(tokens, -60)  # the answer used 40 of the 100 estimated
    ledger.settle(tokens, -20)  # another, summed with it
    second = await ledger.admit(plan, 100, None)
    assert await script_calls(redis) - before == 1  # the settlements rode on the admission
    assert second[5] in (880, 881)  # 1000 - 20 - 100 (a token a 60 ms may have come back meanwhile)


async def test_settlements_go_out_by_themselves_within_the_delay_or_at_drain(
    redis: Redis, ledger: Ledger, redis_prefix: str
) -> None:
    key = f"{redis_prefix}cache:entry".encode()
    ledger.settle((), 0, (key, whole_entry(b'{"answer": 1}'), 60_000))
    assert await redis.get(key) is None  # queued: the delay is half a second
    deadline = asyncio.get_running_loop().time() + 5
    while await redis.get(key) is None:
        assert asyncio.get_running_loop().time() < deadline, "the queued write never went out"
        await asyncio.sleep(0.05)
    assert await redis.get(key) == b'W{"answer": 1}'
    assert 0 < await redis.pttl(key) <= 60_000

    other = f"{redis_prefix}cache:other".encode()
    ledger.settle((), 0, (other, whole_entry(b"{}"), 60_000))
    await ledger.drain()  # what the app's shutdown does
    assert await redis.get(other) == b"W{}"
    assert not ledger.pending()


async def test_a_client_that_leaves_while_it_waits_gets_its_token_estimate_back(
    redis: Redis, ledger: Ledger, redis_prefix: str
) -> None:
    plan = limits(redis_prefix, tpm=1000)
    waiting = asyncio.ensure_future(ledger.admit(plan, 300, None))
    waiting.cancel()  # the client left before Redis answered; the call still goes out and charges it
    await ledger.drain()  # its answer queues the estimate's return; drain sends that too
    after = await ledger.admit(plan, 1, None)
    assert after[0] == 1 and after[1] == 98  # both requests count
    assert after[5] in (999, 1000)  # the 300 tokens came back


async def test_the_cache_entry_read_with_the_admission_is_the_one_written_before_it(
    redis: Redis, ledger: Ledger, redis_prefix: str
) -> None:
    key = f"{redis_prefix}cache:k".encode()
    missed = await ledger.admit((), 1, key)
    assert missed[0] == 1 and missed[-1] is None  # no limits: allowed, and no entry
    ledger.settle((), 0, (key, stream_entry([b"data: a\n\n", b"data: [DONE]\n\n"]), 60_000))
    hit = await ledger.admit((), 1, key)
    assert decode(hit[1]) == [b"data: a\n\n", b"data: [DONE]\n\n"]


async def command_calls(redis: Redis, *names: str) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {name: int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in names}


async def test_cache_reads_and_writes_without_limits_go_as_plain_commands_not_the_script(
    redis: Redis, ledger: Ledger, redis_prefix: str
) -> None:
    await ledger.admit(limits(redis_prefix), 1, None)  # opens the connection (and loads the script)
    keys = [f"{redis_prefix}cache:{i}".encode() for i in range(3)]
    before = await command_calls(redis, "evalsha", "mget", "set")
    ledger.settle((), 0, (keys[0], whole_entry(b'{"id": "a"}'), 60_000))
    ledger.settle((), 0, (keys[1], whole_entry(b'{"id": "b"}'), 60_000))
    rows = await asyncio.gather(*(ledger.admit((), 0, key) for key in keys))  # one call: two SETs, one MGET
    assert [decode(row[1]) if row[1] else None for row in rows] == [b'{"id": "a"}', b'{"id": "b"}', None]
    after = await command_calls(redis, "evalsha", "mget", "set")
    assert {name: after[name] - before[name] for name in after} == {"evalsha": 0, "mget": 1, "set": 2}
    assert 59_000 < await redis.pttl(keys[0]) <= 60_000
    ledger.settle((), 0, (keys[2], whole_entry(b'{"id": "c"}'), 60_000))  # writes alone go the same way
    await ledger.drain()
    assert decode(await redis.get(keys[2]) or b"") == b'{"id": "c"}'


async def test_redis_gone_fails_every_admission_of_the_call_with_its_error(redis_prefix: str) -> None:
    from redis.exceptions import ConnectionError

    from tests.services import free_port

    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    fast = fast_connection_for(dead)
    ledger = Ledger(dead, fast)
    outcomes = await asyncio.gather(
        *(ledger.admit(limits(redis_prefix), 1, None) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, ConnectionError) for o in outcomes), outcomes
    assert fast is not None
    fast.close()
    await dead.aclose()


def test_entries_replay_the_same_bytes_with_the_same_boundaries() -> None:
    pieces = [b'data: {"x": 1}\n\n', b"", b"data: \xe2\x82\xac\n\ndata: [DONE]\n\n"]
    assert decode(stream_entry(pieces)) == pieces
    assert decode(whole_entry(b'{"id": "c"}')) == b'{"id": "c"}'
    assert decode(b'{"stream": ["an entry of an older version"]}') is None  # read as a miss


def test_a_recording_stores_only_a_complete_answer_without_an_error_within_the_size() -> None:
    done = b"data: [DONE]\n\n"

    def recorded(pieces: list[bytes], *, relayed: bool = True, max_bytes: int = 1000) -> bytes | None:
        recording = Recording(b"k", 1000, max_bytes)
        for piece in pieces:
            recording.take(piece)
        recording.relayed = relayed
        return recording.entry()

    assert recorded([b"data: a\n\n", done]) == stream_entry([b"data: a\n\n", done])
    assert recorded([b"data: a\n\n", done], relayed=False) is None  # the client left before the end
    assert recorded([b"data: a\n\n"]) is None  # cut short: no [DONE]
    assert recorded([b'data: {"error": {"message": "x"}}\n\n', done]) is None
    assert recorded([b'data: a\n\ndata: {"error": {"message": "x"}}\n\n' + done]) is None  # one piece
    assert recorded([b'data: {"error"-like text}\n\ndata: b\n\n', done]) is not None  # only the last event counts
    assert recorded([b"data: a\n\n", done], max_bytes=10) is None
