"""What only the SQLite store promises: durability across restarts, safety with several processes on one file,
and an honest failure when the file cannot be opened."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from history.messages import NewMessage
from history.store import StoreUnavailable
from history.store.sqlite import SQLiteStore

_WRITER = """
import asyncio, sys
from pathlib import Path
from history.messages import NewMessage
from history.store.sqlite import SQLiteStore

async def main(path, name):
    store = await SQLiteStore.open(Path(path))
    try:
        print("ready", flush=True)
        sys.stdin.readline()  # wait until every writer is ready
        for i in range(25):
            await store.append("shared", [NewMessage(role="user", content=f"{name}-{i}-a"),
                                          NewMessage(role="assistant", content=f"{name}-{i}-b")])
    finally:
        await store.close()

asyncio.run(main(*sys.argv[1:]))
"""


async def test_messages_survive_closing_and_reopening_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dirs" / "history.sqlite3"  # folders are created
    store = await SQLiteStore.open(path)
    await store.append(
        "s",
        [
            NewMessage(role="user", content="kept", message_id="k1", metadata={"a": [1, None]}),
            NewMessage(role="assistant", content="also kept", prompt_tokens=5),
        ],
    )
    before = await store.recent("s", limit=10)
    sessions_before = await store.sessions(limit=10, offset=0)
    await store.close()

    reopened = await SQLiteStore.open(path)  # the schema step is idempotent
    try:
        assert await reopened.recent("s", limit=10) == before
        assert await reopened.sessions(limit=10, offset=0) == sessions_before
        [retried] = await reopened.append("s", [NewMessage(role="user", content="kept", message_id="k1")])
        assert retried == before[0]
        [third] = await reopened.append("s", [NewMessage(role="user", content="next")])
        assert third.seq == 3
    finally:
        await reopened.close()


async def test_two_processes_appending_to_one_file_never_collide(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite3"
    await (await SQLiteStore.open(path)).close()  # create the schema once, as a deployed service would have
    writers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _WRITER,
            str(path),
            name,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for name in ("p1", "p2")
    ]
    for writer in writers:
        assert writer.stdout is not None
        assert await asyncio.wait_for(writer.stdout.readline(), 30) == b"ready\n"
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write(b"go\n")
        await writer.stdin.drain()
    assert [await asyncio.wait_for(writer.wait(), 30) for writer in writers] == [0, 0]

    store = await SQLiteStore.open(path)
    try:
        stored = await store.recent("shared", limit=1000)
    finally:
        await store.close()
    assert [m.seq for m in stored] == list(range(1, 101))
    by_content = {m.content: m.seq for m in stored}
    for name in ("p1", "p2"):
        seqs = [(by_content[f"{name}-{i}-a"], by_content[f"{name}-{i}-b"]) for i in range(25)]
        assert all(b == a + 1 for a, b in seqs)  # each batch is a consecutive block
        assert [a for a, _ in seqs] == sorted(a for a, _ in seqs)  # each writer's order is kept


async def test_a_path_that_cannot_be_created_is_unavailable_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(StoreUnavailable) as caught:
        await SQLiteStore.open(blocker / "history.sqlite3")
    assert str(blocker / "history.sqlite3") in str(caught.value)
    assert "HISTORY_SQLITE_PATH" in str(caught.value)


async def test_a_folder_in_place_of_the_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "history.sqlite3").mkdir()
    with pytest.raises(StoreUnavailable, match="unable to open database file"):
        await SQLiteStore.open(tmp_path / "history.sqlite3")


async def test_ping_notices_a_removed_database_file(tmp_path: Path) -> None:
    store = await SQLiteStore.open(tmp_path / "h.sqlite3")
    try:
        await store.ping()
        (tmp_path / "h.sqlite3").unlink()
        with pytest.raises(StoreUnavailable, match="removed"):
            await store.ping()
    finally:
        await store.close()
