"""The SQLite history store: appends per second and read latency, against SQLite itself in the same run.

    .venv/bin/python bench/history_store.py [--messages 2000]

Baseline: the same inserts and reads written straight with the sqlite3 module (one transaction per
append, same WAL settings), so the figure shows what the store's sequencing, idempotency checks and
async driver cost on top of SQLite on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from history.messages import NewMessage
from history.store.sqlite import SQLiteStore


async def store_figures(path: Path, n: int, concurrency: int) -> dict[str, float]:
    store = await SQLiteStore.open(path)
    try:

        async def writer(w: int) -> None:
            for i in range(n // concurrency):
                await store.append(
                    f"s{w}", [NewMessage(role="user", content=f"message {i} " * 20, message_id=f"{w}-{i}")]
                )

        started = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(concurrency)))
        appends = n / (time.perf_counter() - started)
        reads = []
        for _ in range(500):
            t = time.perf_counter()
            await store.recent("s0", 20)
            reads.append(time.perf_counter() - t)
        return {"appends_per_s": appends, "read_p50_ms": statistics.median(reads) * 1000}
    finally:
        await store.close()


def baseline(path: Path, n: int) -> dict[str, float]:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE m (session_id TEXT, seq INTEGER, content TEXT, PRIMARY KEY (session_id, seq))")
    started = time.perf_counter()
    for i in range(n):
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO m VALUES ('s0', ?, ?)", (i, f"message {i} " * 20))
        db.execute("COMMIT")
    appends = n / (time.perf_counter() - started)
    reads = []
    for _ in range(500):
        t = time.perf_counter()
        db.execute(
            "SELECT * FROM (SELECT * FROM m WHERE session_id='s0' ORDER BY seq DESC LIMIT 20) ORDER BY seq"
        ).fetchall()
        reads.append(time.perf_counter() - t)
    db.close()
    return {"appends_per_s": appends, "read_p50_ms": statistics.median(reads) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-history-"))
    raw = baseline(folder / "raw.sqlite3", args.messages)
    one = asyncio.run(store_figures(folder / "one.sqlite3", args.messages, 1))
    many = asyncio.run(store_figures(folder / "many.sqlite3", args.messages, 16))
    print("| path | appends/s | read last 20, p50 ms |\n|---|---|---|")
    print(f"| sqlite3 module, one writer (baseline) | {raw['appends_per_s']:.0f} | {raw['read_p50_ms']:.3f} |")
    print(f"| history store, one writer | {one['appends_per_s']:.0f} | {one['read_p50_ms']:.3f} |")
    print(f"| history store, 16 concurrent writers | {many['appends_per_s']:.0f} | {many['read_p50_ms']:.3f} |")
    print(
        f"\nstore/baseline appends: {one['appends_per_s'] / raw['appends_per_s']:.2f}x (one writer), "
        f"{many['appends_per_s'] / raw['appends_per_s']:.2f}x (16 writers)"
    )


if __name__ == "__main__":
    main()
