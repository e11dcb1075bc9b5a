"""Rate-limit leases (gateway.leases) against a real Redis (the session's private server, tests/conftest.py):
what a busy replica takes ahead, admits from itself with no script call (Redis's own command counters say
so), how a lease's units pass with time, and that replicas with leases never let more than the limit
through. A limit's state is read back from Redis itself: the units it holds charged (GCRA's arrival time
ahead of Redis's clock, divided by the limit's interval)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from chat_common.errors import APIError
from gateway.api_keys import ApiKey
from gateway.config import RateLimit
from gateway.ledger import Ledger, LimitKey
from gateway.limits import Admission, Limiter, Plan
from gateway.resp import FastConnection, fast_connection_for
from scripts.local_redis import LocalRedis
from tests.gateway.fakes import chat, model_replica
from tests.gateway.private_redis import gateway_for, kill

KEY = ApiKey("k1", "test", None, None, None, None)  # no limits of its own: the model's apply to it


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


class Replica:
    """One gateway replica's limits: a :class:`Limiter` with its own ledger on its own connection."""

    def __init__(self, redis: Redis, prefix: str, limits: RateLimit, lease_s: float) -> None:
        self.limiter = Limiter({"m": limits}, prefix=prefix, lease_s=lease_s)
        fast = fast_connection_for(redis)
        assert fast is not None
        self.fast: FastConnection = fast
        self.limiter.ledger = Ledger(redis, fast)
        plan = self.limiter.plan(KEY, None, "m")
        assert plan is not None
        self.plan: Plan = plan

    @property
    def ledger(self) -> Ledger:
        assert self.limiter.ledger is not None
        return self.limiter.ledger

    async def admit(self, tokens: int = 10) -> Admission | None:
        try:
            return await self.limiter.admit(self.plan, tokens)
        except APIError as exc:
            assert exc.status_code == 429
            return None

    async def close(self) -> None:
        await self.ledger.drain()
        self.fast.close()


@pytest.fixture
async def replicas(redis: Redis, redis_prefix: str) -> AsyncIterator[list[Replica]]:
    made: list[Replica] = []
    yield made
    for replica in made:
        await replica.close()


async def script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def charged(redis: Redis, limit: LimitKey) -> float:
    """The units ``limit`` holds charged in Redis now."""
    seconds, micros = await redis.time()
    now_ms = seconds * 1000 + micros / 1000
    state = await redis.get(limit.key)  # its TAT, then ":" and where its last lease ends (limits.lua)
    return 0.0 if state is None else max(float(state.split(b":")[0]) - now_ms, 0.0) / (60_000 / limit.per_minute)


def remaining(admission: Admission) -> int:
    return int(dict(admission.headers)[b"x-ratelimit-remaining-requests"])


async def test_a_busy_subject_takes_a_lease_and_is_admitted_from_it_without_a_call(
    redis: Redis, redis_prefix: str, replicas: list[Replica]
) -> None:
    replicas.append(one := Replica(redis, redis_prefix, RateLimit(rpm=600), lease_s=1.0))  # leases of 10
    assert [lease.size for lease in one.plan.leases] == [10]
    admissions = [await one.admit()]  # counted alone: the subject is not busy yet
    before = await script_calls(redis)  # (after the connection's first call, which loads the script)
    admissions += [await one.admit() for _ in range(11)]
    # the second takes a lease of 10 beside itself: the next ten come from it
    assert await script_calls(redis) - before == 1
    assert one.plan.leases[0].units == 0
    assert await charged(redis, one.plan.states[0]) == pytest.approx(12, abs=0.3)
    # the client sees the limit count down one request at a time, as without a lease (a unit a 100 ms refills)
    seen = [remaining(a) for a in admissions if a is not None]
    assert len(seen) == 12 and all(abs(count - (599 - i)) <= 1 for i, count in enumerate(seen))
    await one.admit()  # the lease is spent: the next request takes a new one
    assert await script_calls(redis) - before == 2
    assert one.plan.leases[0].units == 10


async def test_requests_the_lease_cannot_admit_wait_for_the_one_asking_for_a_new_block(
    redis: Redis, redis_prefix: str, replicas: list[Replica]
) -> None:
    replicas.append(one := Replica(redis, redis_prefix, RateLimit(rpm=600), lease_s=1.0))  # leases of 10
    await one.admit()  # the subject is busy from now on
    before = await script_calls(redis)
    admitted = await asyncio.gather(*(one.admit() for _ in range(5)))  # at once, the lease empty
    assert all(admitted)
    assert await script_calls(redis) - before == 1  # one asks, in Redis; four wait for its lease
    lease = one.plan.leases[0]
    assert (lease.units, lease.asked) == (10 - 4, None)  # one lease of 10, not five
    assert await charged(redis, one.plan.states[0]) == pytest.approx(1 + 1 + 10, abs=0.3)


async def test_token_corrections_of_leased_requests_are_made_on_the_lease(
    redis: Redis, redis_prefix: str, replicas: list[Replica]
) -> None:
    # leases of 1,000 tokens; 100 tokens a second refill
    replicas.append(one := Replica(redis, redis_prefix, RateLimit(tpm=6_000), lease_s=10.0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    first, second = await one.admit(50), await one.admit(50)  # the second takes a lease beside it
    assert first is not None and second is not None and not second.leases  # (admitted in Redis)
    before = await script_calls(redis)
    third, fourth = await one.admit(50), await one.admit(50)
    assert third is not None and third.leases and fourth is not None  # from the lease
    third.used = 80  # the answer used 30 more than its estimate
    third.finish()
    fourth.used = 20  # 30 less
    fourth.finish()
    await asyncio.sleep(0.05)
    assert await script_calls(redis) == before  # nothing sent: both corrections taken by the lease
    lease = one.plan.leases[0]
    assert lease.units == 1000 - 50 - 30 - 50 + 30
    first.used, second.used = 50, 50
    first.finish()
    second.finish()
    await one.ledger.drain()
    # in Redis: the two requests admitted there and the lease, less what refilled meanwhile
    state = await charged(redis, one.plan.states[0])
    refilled = (loop.time() - started) * 100
    assert 50 + 50 + 1000 - refilled - 2 <= state <= 50 + 50 + 1000


async def test_a_lease_is_one_block_whose_units_pass_with_time(
    redis: Redis, redis_prefix: str, replicas: list[Replica]
) -> None:
    # 60,000 tokens a minute: a token's slot every ms; leases of 100 tokens
    replicas.append(one := Replica(redis, redis_prefix, RateLimit(tpm=60_000), lease_s=0.1))
    await one.admit(10)
    await one.admit(10)  # a lease of 100 beside it: the limit's last 100 slots
    lease = one.plan.leases[0]
    end = lease.until_ms
    assert lease.usable(end - 200) == 100  # every slot of the block still ahead
    assert lease.usable(end - 50.5) == 50  # the first half has passed: gone, used or not
    assert lease.usable(end + 1) == 0
    assert one.limiter.leases.take(one.plan, 10, (end + 1) / 1000) is None


async def test_a_refund_never_frees_the_slots_of_a_block_leased_after_it(
    redis: Redis, redis_prefix: str, replicas: list[Replica]
) -> None:
    # 60,000 tokens a minute: a token's slot every ms; leases of 100 tokens
    replicas.append(one := Replica(redis, redis_prefix, RateLimit(tpm=60_000), lease_s=0.1))
    replicas.append(other := Replica(redis, redis_prefix, RateLimit(tpm=60_000), lease_s=0))
    loop = asyncio.get_running_loop()
    started = loop.time()
    big = await other.admit(5_000)  # another replica's request: its estimate charged
    await one.admit(10)
    await one.admit(10)  # a lease of 100 beside it: the block ends about 5,120 ms ahead
    assert big is not None
    big.used = 0  # the other request used nothing: its 5,000 go back ...
    big.finish()
    await other.ledger.drain()
    # ... but not past the end of the block leased since, which the first replica still hands out
    state = await charged(redis, one.plan.states[0])
    assert 5_120 - (loop.time() - started) * 1000 - 2 <= state <= 5_120


async def test_a_correction_of_an_earlier_block_goes_to_redis_not_to_the_next_block(
    redis: Redis, redis_prefix: str, replicas: list[Replica]
) -> None:
    # leases of 1,000 tokens
    replicas.append(one := Replica(redis, redis_prefix, RateLimit(tpm=6_000), lease_s=10.0))
    await one.admit(50)
    await one.admit(50)  # the first block
    early = await one.admit(50)
    assert early is not None and early.leases
    lease = one.plan.leases[0]
    lease.units = 10  # most of it used meanwhile: the next request needs a new block
    await one.admit(50)  # asks for a second block
    await one.admit(50)
    await one.admit(50)  # from it
    assert lease.block == 2 and lease.units == 900
    before = await script_calls(redis)
    early.used = 10  # used 40 less than its estimate, from the first block
    early.finish()
    assert lease.units == 900  # not added to the second block
    await one.ledger.drain()
    assert await script_calls(redis) - before == 1  # sent to Redis instead


async def test_small_limits_are_never_leased(redis: Redis, redis_prefix: str, replicas: list[Replica]) -> None:
    replicas.append(one := Replica(redis, redis_prefix, RateLimit(rpm=60, tpm=100_000), lease_s=0.1))
    assert one.plan.leases == ()  # 60 a minute: a tenth of a request in 0.1 s
    before = await script_calls(redis)
    for _ in range(5):
        await one.admit()
    assert await script_calls(redis) - before == 5


async def test_leases_are_granted_only_where_they_all_fit_beside_the_request(
    redis: Redis, redis_prefix: str, replicas: list[Replica]
) -> None:
    # leases of 4 requests and 20,000 tokens
    replicas.append(one := Replica(redis, redis_prefix, RateLimit(rpm=12, tpm=60_000), lease_s=20))
    ledger, limits = one.ledger, one.plan.states
    for _ in range(6):
        assert (await ledger.admit(limits, 1, None))[0] == 1
    row = await ledger.admit(limits, 1, None, [10, 100])  # 7 requests, and 10 more do not fit: no lease at all
    assert (row[0], row[4], row[8]) == (1, 0, 0)
    row = await ledger.admit(limits, 1, None, [4, 100])  # 8 charged, and 4 more: 12 fits, and so do the tokens
    assert (row[0], row[1], row[4], row[8]) == (1, 0, 4, 100)
    row = await ledger.admit(limits, 1, None, [4, 100])  # the limit is reached: refused, nothing leased
    assert (row[0], row[4], row[8]) == (0, 0, 0)
    assert await charged(redis, limits[0]) == pytest.approx(12, abs=0.1)


async def test_a_client_that_leaves_before_its_admission_leaves_its_lease_to_pass(
    redis: Redis, redis_prefix: str, replicas: list[Replica]
) -> None:
    replicas.append(one := Replica(redis, redis_prefix, RateLimit(rpm=600, tpm=600_000), lease_s=1.0))
    ledger, limits = one.ledger, one.plan.states
    waiting = ledger.admit(limits, 100, None, [10, 10_000])
    waiting.cancel()  # the client left while the call was out
    await ledger.drain()
    # the request still counts; the leases taken pass unused (never given back), and so its tokens cannot come
    # back either: they lie before the block leased with them (a token every 0.1 ms refills meanwhile)
    assert await charged(redis, limits[0]) == pytest.approx(1 + 10, abs=0.2)
    assert await charged(redis, limits[1]) == pytest.approx(100 + 10_000, abs=60)


async def test_replicas_with_leases_never_let_more_than_the_limit_through(
    redis: Redis, redis_prefix: str, replicas: list[Replica]
) -> None:
    limit = 300
    for _ in range(3):
        replicas.append(Replica(redis, redis_prefix, RateLimit(rpm=limit), lease_s=2.0))  # leases of 10
    before = await script_calls(redis)
    started = asyncio.get_running_loop().time()

    async def load(replica: Replica) -> int:
        admitted = 0
        for _ in range(40):  # 200 requests, 5 at a time: the subject is busy, leases come and go
            results = await asyncio.gather(*(replica.admit() for _ in range(5)))
            admitted += sum(result is not None for result in results)
        return admitted

    admitted = sum(await asyncio.gather(*(load(replica) for replica in replicas)))
    elapsed = asyncio.get_running_loop().time() - started
    calls = await script_calls(redis) - before
    refill = elapsed * limit / 60
    assert admitted <= limit + refill + 1  # never more than the limit, whatever the leases
    assert admitted >= limit - 3 * 10  # at most each replica's lease held back unused
    assert calls < 600 * 0.7  # leases were taken: fewer calls than requests


async def test_requests_admitted_from_a_lease_carry_the_limit_headers(redis_url: str, redis_prefix: str) -> None:
    async with gateway_for(model_replica(), redis_url, redis_prefix, rate_limit_anonymous={"rpm": 6000}) as client:
        answers = [await client.post("/v1/chat/completions", content=chat()) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    counts = [int(a.headers["x-ratelimit-remaining-requests"]) for a in answers]
    assert all(abs(count - (5999 - i)) <= 1 for i, count in enumerate(counts)), counts
    assert all(a.headers["x-ratelimit-limit-requests"] == "6000" for a in answers)


async def test_when_redis_dies_a_held_lease_still_admits_then_the_failure_policy_applies(
    private_redis: Callable[[], LocalRedis], redis_prefix: str
) -> None:
    replica = model_replica()
    own = private_redis()
    # leases of 4 requests lasting 2 s
    limits = {"rate_limit_anonymous": {"rpm": 120}, "rate_limit_lease_s": 2.0, "redis_failure": "closed"}
    async with gateway_for(replica, own.url, redis_prefix, **limits) as client:
        before = [await client.post("/v1/chat/completions", content=chat()) for _ in range(2)]  # the 2nd: a lease
        kill(own)
        after = [await client.post("/v1/chat/completions", content=chat()) for _ in range(5)]
    assert [a.status_code for a in before] == [200, 200]
    # the 4 units held are this replica's to give: then Redis must be asked, and cannot be
    assert [a.status_code for a in after] == [200, 200, 200, 200, 503]
    assert after[-1].json()["error"]["code"] == "ratelimit_unavailable"
    assert len(replica.chat_requests()) == 6


async def test_a_limit_whose_lease_still_covers_the_request_keeps_it(
    redis: Redis, redis_prefix: str, replicas: list[Replica]
) -> None:
    # leases of 10 requests and 1,000 tokens: at 200 tokens a request, the token lease runs out first
    replicas.append(one := Replica(redis, redis_prefix, RateLimit(rpm=600, tpm=60_000), lease_s=1.0))
    await one.admit(200)
    await one.admit(200)  # both leases taken beside it
    requests, tokens = one.plan.leases
    for _ in range(5):
        assert await one.admit(200) is not None
    assert (requests.units, tokens.units) == (5, 0)
    before = await script_calls(redis)
    await one.admit(200)  # counted in Redis, with a new token lease only
    assert await script_calls(redis) - before == 1
    assert (requests.units, tokens.units) == (5, 1000)
    await one.admit(200)  # from the leases again
    assert await script_calls(redis) - before == 1
    assert (requests.units, tokens.units) == (4, 800)
