"""Benchmark of the durable queue against plain SQLite, in one run.

    python tests/bench/bench_queue.py [--events 100000] [--durability full|relaxed]

Prints, on this machine and disk:

1. baseline: plain ``sqlite3`` inserts, WAL, ``synchronous=FULL``, 100 rows
   (one serialised event each) per commit: rows/s;
2. put: :class:`DurableQueue` with 100 concurrent producers on one event loop,
   each putting 100-event batches until ``--events`` are in: events/s, the
   number of queue items (group commits) and put latency;
3. drain: get + ack of that backlog from one sender thread: events/s;

and the ratios of 2 and 3 to 1.  Runs well under 60 s with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from collector.queue.sqlite import DurableQueue

PRODUCERS = 100
BATCH = 100


def make_event(i: int) -> dict[str, Any]:
    """A usage event of typical size (~250 bytes serialised)."""
    return {
        "specversion": "1.0",
        "id": f"evt-{i:012d}",
        "source": "bench/api-gateway",
        "type": "api.request",
        "subject": f"customer-{i % 997}",
        "time": "2024-05-01T12:00:00.000Z",
        "data": {"route": "/v1/chat/completions", "tokens": i % 4096, "model": "m-7b"},
    }


def bench_baseline(directory: Path, rows: int) -> float:
    """Plain sqlite3: batched inserts of BATCH rows per commit, WAL + FULL."""
    conn = sqlite3.connect(directory / "baseline.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (_id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB)")
    payloads = [(orjson.dumps(make_event(i)),) for i in range(BATCH)]
    started = time.perf_counter()
    for _ in range(rows // BATCH):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (data) VALUES (?)", payloads)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return (rows // BATCH) * BATCH / elapsed


async def bench_put(queue: DurableQueue, events: int) -> tuple[float, list[float]]:
    """PRODUCERS concurrent producers, BATCH events per put; events/s, latencies."""
    rounds = max(1, events // (PRODUCERS * BATCH))
    batches = [[make_event(p * BATCH + i) for i in range(BATCH)] for p in range(PRODUCERS)]
    latencies: list[float] = []

    async def producer(batch: list[dict[str, Any]]) -> None:
        for _ in range(rounds):
            started = time.perf_counter()
            await queue.put(batch)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(producer(batch) for batch in batches))
    elapsed = time.perf_counter() - started
    return rounds * PRODUCERS * BATCH / elapsed, latencies


def bench_drain(queue: DurableQueue) -> tuple[float, int, int]:
    """get + ack until empty; events/s, events and items drained."""
    events = items = 0
    started = time.perf_counter()
    while (item := queue.get(0)) is not None:
        queue.ack(item.id)
        events += len(item.events)
        items += 1
    return events / (time.perf_counter() - started), events, items


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--durability", choices=["full", "relaxed"], default="full")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        directory = Path(tmp)
        baseline = bench_baseline(directory, args.events)
        print(f"baseline  sqlite3 WAL synchronous=FULL, {BATCH} rows/commit: {baseline:12,.0f} rows/s")

        queue = DurableQueue(directory / "queue", durability=args.durability)
        queue.open()
        try:
            put_rate, latencies = asyncio.run(bench_put(queue, args.events))
            stats = queue.stats()
            print(
                f"put       DurableQueue({args.durability}), {PRODUCERS} producers x {BATCH}"
                f"-event batches: {put_rate:12,.0f} events/s"
                f"  ({stats.events:,} events in {stats.items:,} items,"
                f" {stats.events / max(1, stats.items):.0f} events/item,"
                f" {stats.bytes / 1e6:.1f} MB;"
                f" put latency p50 {statistics.median(latencies) * 1e3:.1f} ms,"
                f" p99 {percentile(latencies, 0.99) * 1e3:.1f} ms)"
            )
            drain_rate, drained, items = bench_drain(queue)
            print(
                f"drain     get + ack of a {drained:,}-event backlog ({items:,} items):  {drain_rate:12,.0f} events/s"
            )
        finally:
            queue.close()

    print(f"ratio     put / baseline   = {put_rate / baseline:.2f}")
    print(f"ratio     drain / baseline = {drain_rate / baseline:.2f}")


if __name__ == "__main__":
    main()
