"""Benchmark of the durable queue against plain SQLite, in one run.

    python tests/bench/bench_queue.py [--events 100000] [--durability full|relaxed]

Prints, on this machine and disk:

1. baseline: plain ``sqlite3`` inserts, WAL, ``synchronous=FULL``, 100 rows
   (one serialised event each) per commit: rows/s;
2. put: :class:`DurableQueue` with 100 concurrent producers on one event loop,
   each putting 100-event batches until ``--events`` are in: events/s, the
   number of queue items (group commits) and put latency; and, for
   comparison, the same without grouping (``commit_max_events=1``);
3. drain: get + ack of that backlog from one sender thread: events/s;

and the ratios of 2 and 3 to 1: medians of ``--repeat`` rounds (3), each on
fresh files.  Runs in a few seconds with the defaults (well under 60 s).
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

from collector.runtime.queue.sqlite import DurableQueue

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


def run_queue(directory: Path, events: int, durability: str, max_events: int) -> dict[str, float]:
    """One put run and one drain run on a fresh queue."""
    queue = DurableQueue(directory, durability=durability, commit_max_events=max_events)  # type: ignore[arg-type]
    queue.open()
    try:
        put_rate, latencies = asyncio.run(bench_put(queue, events))
        stats = queue.stats()
        drain_rate, _, _ = bench_drain(queue)
    finally:
        queue.close()
    return {
        "put": put_rate,
        "drain": drain_rate,
        "items": stats.items,
        "events": stats.events,
        "mb": stats.bytes / 1e6,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--durability", choices=["full", "relaxed"], default="full")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; medians are reported")
    args = parser.parse_args()

    baselines: list[float] = []
    grouped: list[dict[str, float]] = []
    ungrouped: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        for round_ in range(args.repeat):
            directory = Path(tmp) / f"round-{round_}"
            directory.mkdir()
            baselines.append(bench_baseline(directory, args.events))
            grouped.append(run_queue(directory / "grouped", args.events, args.durability, 1000))
            # For comparison: no grouping, one queue item (one fsync) per put.
            ungrouped.append(run_queue(directory / "ungrouped", args.events, args.durability, 1))
            print(
                f"round {round_ + 1}: baseline {baselines[-1]:,.0f} rows/s, put {grouped[-1]['put']:,.0f}"
                f" events/s, drain {grouped[-1]['drain']:,.0f} events/s"
            )

    baseline = statistics.median(baselines)
    g = {key: statistics.median(r[key] for r in grouped) for key in grouped[0]}
    u = {key: statistics.median(r[key] for r in ungrouped) for key in ungrouped[0]}
    print(f"\nmedians of {args.repeat} round(s), {args.events:,} events, durability={args.durability}:")
    print(f"baseline  sqlite3 WAL synchronous=FULL, {BATCH} rows/commit      {baseline:12,.0f} rows/s")
    print(
        f"put       {PRODUCERS} producers x {BATCH}-event batches, grouped     {g['put']:12,.0f} events/s"
        f"  ({g['events']:,.0f} events in {g['items']:,.0f} items, {g['mb']:.1f} MB;"
        f" put latency p50 {g['p50_ms']:.1f} ms, p99 {g['p99_ms']:.1f} ms)"
    )
    print(
        f"put       same, one item per put (commit_max_events=1) {u['put']:12,.0f} events/s"
        f"  ({u['items']:,.0f} items; p50 {u['p50_ms']:.1f} ms, p99 {u['p99_ms']:.1f} ms)"
    )
    print(f"drain     get + ack of the grouped backlog               {g['drain']:12,.0f} events/s")
    print(f"drain     get + ack of the one-item-per-put backlog      {u['drain']:12,.0f} events/s")

    # Ratios within a round (same disk conditions), then the median.
    def ratio(results: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] / b for r, b in zip(results, baselines, strict=True))

    print(f"ratio     put (grouped) / baseline          = {ratio(grouped, 'put'):.2f}")
    print(f"ratio     put (one item per put) / baseline = {ratio(ungrouped, 'put'):.2f}")
    print(f"ratio     drain (grouped) / baseline        = {ratio(grouped, 'drain'):.2f}")


if __name__ == "__main__":
    main()
