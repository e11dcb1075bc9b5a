"""The contract of :class:`history.store.MessageStore`, run against both stores (see conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from history.messages import InvalidSessionId, NewMessage
from history.store import StoreUnavailable
from tests.history.conftest import StoreFactory


def msg(content: str, role: str = "user", **fields: Any) -> NewMessage:
    return NewMessage(role=role, content=content, **fields)  # type: ignore[arg-type]


async def test_appends_get_consecutive_seqs_and_read_back_in_order(make_store: StoreFactory) -> None:
    store = await make_store()
    first = await store.append("s1", [msg("hi", "system"), msg("hello"), msg("hey", "assistant")])
    second = await store.append(
        "s1",
        [
            msg(
                "answer",
                "assistant",
                model="smollm2",
                prompt_tokens=12,
                completion_tokens=3,
                request_id="r-1",
                status="interrupted",
                metadata={"tool_calls": [{"id": "c1"}], "note": "héllo ✓", "n": 1.5},
            ),
            msg("result", "tool", message_id="m-5"),
        ],
    )
    assert [m.seq for m in first] == [1, 2, 3]
    assert [m.seq for m in second] == [4, 5]
    assert first[0].created_at.endswith("Z")

    stored = await store.recent("s1", limit=10)
    assert stored == first + second
    assert [m.content for m in stored] == ["hi", "hello", "hey", "answer", "result"]
    assert stored[3].model_dump(exclude={"seq", "created_at"}) == {
        "role": "assistant",
        "content": "answer",
        "model": "smollm2",
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "request_id": "r-1",
        "message_id": None,
        "status": "interrupted",
        "metadata": {"tool_calls": [{"id": "c1"}], "note": "héllo ✓", "n": 1.5},
    }
    assert stored[0].status == "complete" and stored[0].metadata == {}
    assert await store.recent("s2", limit=10) == []  # sessions are separate


async def test_limit_and_before_seq_page_backwards(make_store: StoreFactory) -> None:
    store = await make_store()
    await store.append("s", [msg(f"m{i}") for i in range(1, 11)])
    assert [m.seq for m in await store.recent("s", limit=3)] == [8, 9, 10]
    assert [m.seq for m in await store.recent("s", limit=3, before_seq=8)] == [5, 6, 7]
    assert [m.seq for m in await store.recent("s", limit=100, before_seq=3)] == [1, 2]
    assert await store.recent("s", limit=5, before_seq=1) == []
    assert [m.content for m in await store.recent("s", limit=1)] == ["m10"]


async def test_unknown_session_reads_empty_and_deletes_nothing(make_store: StoreFactory) -> None:
    store = await make_store()
    assert await store.recent("nobody", limit=20) == []
    assert await store.delete("nobody") == 0
    assert await store.sessions(limit=10, offset=0) == []


async def test_sessions_are_listed_most_recently_updated_first(make_store: StoreFactory) -> None:
    store = await make_store()
    for session_id in ("b", "a", "c", "b"):  # timestamps have millisecond precision: keep them apart
        await store.append(session_id, [msg(f"to {session_id}")])
        await asyncio.sleep(0.003)
    listed = await store.sessions(limit=10, offset=0)
    assert [(s.session_id, s.message_count) for s in listed] == [("b", 2), ("c", 1), ("a", 1)]
    assert listed[0].created_at < listed[0].updated_at
    assert listed[1].created_at == listed[1].updated_at
    assert [s.session_id for s in await store.sessions(limit=1, offset=1)] == ["c"]
    assert await store.sessions(limit=5, offset=3) == []


async def test_delete_removes_everything_and_numbering_restarts(make_store: StoreFactory) -> None:
    store = await make_store()
    await store.append("gone", [msg("1", message_id="x"), msg("2"), msg("3")])
    await store.append("kept", [msg("k")])
    assert await store.delete("gone") == 3
    assert await store.recent("gone", limit=10) == []
    assert [s.session_id for s in await store.sessions(limit=10, offset=0)] == ["kept"]
    again = await store.append("gone", [msg("new", message_id="x")])  # the old message_id is free again
    assert [(m.seq, m.content) for m in again] == [(1, "new")]
    assert len(await store.recent("kept", limit=10)) == 1


async def test_retry_with_message_id_returns_the_stored_message(make_store: StoreFactory) -> None:
    store = await make_store()
    [original] = await store.append("s", [msg("hello", message_id="req-1:user")])
    [retried] = await store.append("s", [msg("hello, changed", message_id="req-1:user")])
    assert retried == original  # same seq, created_at and content: nothing stored twice
    assert await store.recent("s", limit=10) == [original]
    assert [s.message_count for s in await store.sessions(limit=10, offset=0)] == [1]
    [other] = await store.append("other", [msg("elsewhere", message_id="req-1:user")])  # ids are per session
    assert other.seq == 1 and other.content == "elsewhere"


async def test_retry_of_a_partly_stored_batch_stores_only_the_new_messages(make_store: StoreFactory) -> None:
    store = await make_store()
    a, b = await store.append("s", [msg("a", message_id="id-a"), msg("b", message_id="id-b")])
    result = await store.append(
        "s", [msg("a", message_id="id-a"), msg("c", message_id="id-c"), msg("d"), msg("b", message_id="id-b")]
    )
    assert [(m.content, m.seq) for m in result] == [("a", 1), ("c", 3), ("d", 4), ("b", 2)]
    assert result[0] == a and result[3] == b
    assert [m.content for m in await store.recent("s", limit=10)] == ["a", "b", "c", "d"]
    assert [s.message_count for s in await store.sessions(limit=10, offset=0)] == [4]


async def test_a_message_id_repeated_within_one_batch_is_stored_once(make_store: StoreFactory) -> None:
    store = await make_store()
    result = await store.append("s", [msg("first", message_id="dup"), msg("second", message_id="dup")])
    assert [(m.seq, m.content) for m in result] == [(1, "first"), (1, "first")]
    assert len(await store.recent("s", limit=10)) == 1


async def test_fifty_concurrent_appends_lose_nothing_and_number_without_gaps(make_store: StoreFactory) -> None:
    store = await make_store()
    results = await asyncio.gather(*(store.append("busy", [msg(f"m{i}")]) for i in range(50)))
    returned = {r[0].content: r[0].seq for r in results}
    assert sorted(returned.values()) == list(range(1, 51))
    stored = await store.recent("busy", limit=1000)
    assert [m.seq for m in stored] == list(range(1, 51))
    assert {m.content: m.seq for m in stored} == returned  # what each writer was told is what is stored
    assert [s.message_count for s in await store.sessions(limit=10, offset=0)] == [50]


async def test_concurrent_batches_each_get_a_consecutive_block(make_store: StoreFactory) -> None:
    store = await make_store()
    results = await asyncio.gather(*(store.append("s", [msg(f"{b}.{i}") for i in range(5)]) for b in range(10)))
    for batch in results:
        first = batch[0].seq
        assert [m.seq for m in batch] == list(range(first, first + 5))
    assert [m.seq for m in await store.recent("s", limit=100)] == list(range(1, 51))


@pytest.mark.parametrize("bad", ["", "has space", "x" * 129, "slash/in", "ünïcode", "semi;colon"])
async def test_malformed_session_ids_are_refused(make_store: StoreFactory, bad: str) -> None:
    store = await make_store()
    with pytest.raises(InvalidSessionId):
        await store.append(bad, [msg("x")])
    with pytest.raises(InvalidSessionId):
        await store.recent(bad, limit=1)
    with pytest.raises(InvalidSessionId):
        await store.delete(bad)
    assert await store.sessions(limit=10, offset=0) == []


async def test_the_widest_valid_session_id_is_accepted(make_store: StoreFactory) -> None:
    store = await make_store()
    session_id = "Az09._:-" * 16  # 128 characters, every kind allowed
    await store.append(session_id, [msg("x")])
    assert [s.session_id for s in await store.sessions(limit=10, offset=0)] == [session_id]


async def test_a_closed_store_says_it_is_unavailable(make_store: StoreFactory) -> None:
    store = await make_store()
    await store.ping()
    await store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        await store.recent("s", limit=1)
    with pytest.raises(StoreUnavailable):
        await store.append("s", [msg("x")])
