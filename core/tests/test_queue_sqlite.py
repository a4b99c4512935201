"""DurableQueue: behaviour a user of the collector would notice."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.errors import BackpressureError
from collector.runtime.queue import BatchQueue, QueueItem
from collector.runtime.queue.sqlite import DurableQueue

TABLE = "ack_queue_queue"  # persist-queue's table for name="queue"


class Disk:
    """Faults and a log of statements, through the queue's public ``on_connect`` hook.

    Sees every SQLite connection the queue opens (persist-queue's and its
    own): records which statements ran on which, and can make the disk slow
    (commits), failing (an error that is not "disk full") or full (SQLite's
    own SQLITE_FULL, by capping the file at the pages it has).
    """

    def __init__(self) -> None:
        self.connections: list[sqlite3.Connection] = []
        self.statements: list[tuple[sqlite3.Connection, str]] = []
        self.slow_commit_s = 0.0
        self.failing = False

    def __call__(self, conn: sqlite3.Connection) -> None:
        self.connections.append(conn)
        conn.set_trace_callback(lambda sql: self._traced(conn, sql))
        conn.set_progress_handler(lambda: 1 if self.failing else 0, 1)

    def _traced(self, conn: sqlite3.Connection, sql: str) -> None:
        self.statements.append((conn, sql))
        if sql.startswith("INSERT") and self.slow_commit_s:
            time.sleep(self.slow_commit_s)

    def full(self) -> None:
        for conn in self.connections:
            conn.execute("PRAGMA max_page_count=1")  # SQLite keeps it at the current size

    def space_again(self) -> None:
        for conn in self.connections:
            conn.execute("PRAGMA max_page_count=4294967294")

    def ran(self, prefix: str) -> list[sqlite3.Connection]:
        """The connections that ran a statement starting with ``prefix``."""
        return [conn for conn, sql in self.statements if sql.startswith(prefix)]


@pytest.fixture
def make_queue(tmp_path: Path) -> Iterator[Any]:
    """Open queues in tmp_path/q and close them all at the end."""
    opened: list[DurableQueue] = []

    def make(**kwargs: Any) -> DurableQueue:
        queue = DurableQueue(tmp_path / "q", **kwargs)
        queue.open()
        opened.append(queue)
        return queue

    yield make
    for queue in opened:
        queue.close()


def rows(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Query the database with a connection of our own (sees only commits)."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def drain(queue: DurableQueue) -> list[QueueItem]:
    items = []
    while (item := queue.get(0)) is not None:
        items.append(item)
        queue.ack(item.id)
    return items


def events_of(items: list[QueueItem]) -> list[dict[str, Any]]:
    return [event for item in items for event in item.events]


async def test_put_get_ack_round_trip(make_queue: Any) -> None:
    queue = make_queue()
    assert isinstance(queue, BatchQueue)
    before = time.time()
    await queue.put([{"id": "a", "value": 1}, {"id": "b", "value": 2.5}])

    stats = queue.stats()
    assert (stats.items, stats.events, stats.refusing) == (1, 2, False)
    item = queue.get(1.0)
    assert item is not None
    assert item.events == [{"id": "a", "value": 1}, {"id": "b", "value": 2.5}]
    assert before <= item.enqueued_at <= time.time()
    assert item.size_bytes == stats.bytes > 0
    assert queue.get(0) is None  # claimed: not handed out twice

    queue.ack(item.id)
    stats = queue.stats()
    assert (stats.items, stats.events, stats.bytes, stats.oldest_age_s) == (0, 0, 0, 0.0)
    await queue.put([])  # nothing to commit
    assert queue.stats().items == 0


@pytest.mark.parametrize("kind", ["durable", "memory"])
async def test_get_many_hands_out_the_oldest_items_that_fit(make_queue: Any, kind: str) -> None:
    from collector.runtime.queue.memory import MemoryQueue

    queue = make_queue(commit_wait_ms=0) if kind == "durable" else MemoryQueue(max_bytes=1 << 20)
    for n in (3, 2, 4, 1):  # items of 3, 2, 4 and 1 events, in this order
        await queue.put([{"item": n, "i": i} for i in range(n)])
    first = queue.get_many(0, 6)  # 3 + 2 fit, 3 + 2 + 4 do not
    assert [len(item.events) for item in first] == [3, 2]
    second = queue.get_many(0, 2)  # an item bigger than max_events still goes, alone
    assert [len(item.events) for item in second] == [4]
    assert [len(item.events) for item in queue.get_many(0, 100)] == [1]
    assert queue.get_many(0.01, 100) == []  # all claimed: nothing is handed out twice
    # Released items keep their place: the oldest goes out first again.
    queue.release(second[0].id)
    queue.release(first[0].id)
    again = queue.get_many(0, 100)
    assert [item.id for item in again] == [first[0].id, second[0].id]
    queue.ack(*(item.id for item in [*again, first[1]]))
    assert queue.stats().items == 1  # the 1-event item: claimed, not acknowledged


async def test_get_many_claims_in_order_with_thousands_claimed(make_queue: Any) -> None:
    queue = make_queue(commit_wait_ms=0)
    for i in range(3000):
        await queue.put([{"n": i}])
    taken: list[QueueItem] = []
    while items := queue.get_many(0, 7):
        taken.extend(items)  # none acknowledged: every claim stays outstanding
    assert [item.events[0]["n"] for item in taken] == list(range(3000))
    queue.ack(*(item.id for item in taken[::2]))  # acknowledged out of order, then the rest released
    for item in taken[1::2]:
        queue.release(item.id)
    back = queue.get_many(0, 10_000)
    assert [item.events[0]["n"] for item in back] == list(range(1, 3000, 2))


async def test_get_waits_for_a_put(make_queue: Any) -> None:
    queue = make_queue()
    got: list[QueueItem | None] = []
    sender = threading.Thread(target=lambda: got.append(queue.get(5.0)))
    sender.start()
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await queue.put([{"n": 1}])
    await asyncio.to_thread(sender.join)
    assert got[0] is not None and got[0].events == [{"n": 1}]
    assert time.monotonic() - started < 1.0  # woken, not polled every 10 s
    assert queue.get(0.05) is None  # times out empty


async def test_put_does_not_block_the_event_loop(make_queue: Any) -> None:
    disk = Disk()
    queue = make_queue(on_connect=disk)
    disk.slow_commit_s = 0.3  # a slow disk
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.ensure_future(ticker())
    await queue.put([{"k": 1}])
    ticking.cancel()
    assert len(disk.ran("INSERT")) == 1  # the commit was slow
    assert ticks >= 10  # the loop kept running during the 0.3 s commit


async def test_group_commit_answers_each_producer_after_its_commit(make_queue: Any) -> None:
    queue = make_queue(commit_wait_ms=20)
    db = queue.db_path
    committed_on_return: list[bool] = []

    async def producer(i: int) -> None:
        await queue.put([{"producer": f"p-{i}"}])
        # Another connection sees only committed data.
        found = rows(db, f"SELECT count(*) FROM {TABLE} WHERE instr(data, ?) > 0", f'"p-{i}"'.encode())
        committed_on_return.append(found[0][0] == 1)

    await asyncio.gather(*(producer(i) for i in range(50)))

    assert committed_on_return == [True] * 50
    items = drain(queue)
    assert len(items) <= 5  # one fsync per group, not per put
    assert sorted(e["producer"] for e in events_of(items)) == sorted(f"p-{i}" for i in range(50))


async def test_group_is_capped_by_commit_max_events(make_queue: Any) -> None:
    queue = make_queue(commit_wait_ms=50, commit_max_events=10)
    await asyncio.gather(*(queue.put([{"b": b, "i": i} for i in range(4)]) for b in range(6)))
    items = drain(queue)
    assert all(len(item.events) <= 10 for item in items)
    assert len(events_of(items)) == 24


async def test_producers_on_different_loops(make_queue: Any) -> None:
    queue = make_queue(commit_wait_ms=20)

    def produce_on_own_loop(tag: str) -> None:
        async def run() -> None:
            await asyncio.gather(*(queue.put([{"tag": tag, "i": i}]) for i in range(5)))

        asyncio.run(run())

    threads = [threading.Thread(target=produce_on_own_loop, args=(t,)) for t in "xy"]
    for thread in threads:
        thread.start()
    await queue.put([{"tag": "main"}])
    for thread in threads:
        await asyncio.to_thread(thread.join, 10)
    assert sorted(e["tag"] for e in events_of(drain(queue))) == ["main"] + ["x"] * 5 + ["y"] * 5


async def test_concurrent_producers_and_sender_lose_nothing(make_queue: Any) -> None:
    queue = make_queue(commit_wait_ms=1, commit_max_events=50)
    received: list[dict[str, Any]] = []
    done = threading.Event()

    def sender() -> None:  # releases every 5th item once, as a shutdown would
        seen: set[int] = set()
        while not (done.is_set() and queue.stats().items == 0):
            item = queue.get(0.05)
            if item is None:
                continue
            if item.id % 5 == 0 and item.id not in seen:
                seen.add(item.id)
                queue.release(item.id)
                continue
            received.extend(item.events)
            queue.ack(item.id)

    thread = threading.Thread(target=sender)
    thread.start()

    async def producer(p: int) -> None:
        for i in range(20):
            await queue.put([{"p": p, "i": i, "j": j} for j in range(3)])

    await asyncio.gather(*(producer(p) for p in range(20)))
    done.set()
    await asyncio.to_thread(thread.join, 10)
    assert not thread.is_alive()
    keys = sorted((e["p"], e["i"], e["j"]) for e in received)
    assert keys == sorted((p, i, j) for p in range(20) for i in range(20) for j in range(3))
    stats = queue.stats()
    assert (stats.items, stats.events, stats.bytes) == (0, 0, 0)


async def test_items_and_stats_survive_close_and_reopen(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / "q")
    queue.open()
    await queue.put([{"k": 1}])
    await queue.put([{"k": 2}, {"k": 3}])
    before = queue.stats()
    queue.close()

    queue = DurableQueue(tmp_path / "q")
    queue.open()
    try:
        after = queue.stats()
        assert (after.items, after.events, after.bytes) == (
            before.items,
            before.events,
            before.bytes,
        )
        assert after.oldest_age_s > 0
        assert events_of(drain(queue)) == [{"k": 1}, {"k": 2}, {"k": 3}]
    finally:
        queue.close()


async def test_claimed_but_unacked_items_come_back_after_reopen(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / "q", commit_wait_ms=0)
    queue.open()
    await queue.put([{"k": 1}])
    await queue.put([{"k": 2}])
    first = queue.get(1.0)
    assert first is not None
    queue.close()  # the sender never acked it

    queue = DurableQueue(tmp_path / "q")
    queue.open()
    try:
        assert queue.stats().items == 2
        again = queue.get(1.0)
        assert again is not None and (again.id, again.events) == (first.id, [{"k": 1}])
    finally:
        queue.close()


CRASHING_PRODUCER = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from collector.runtime.queue.sqlite import DurableQueue

    queue = DurableQueue(Path(sys.argv[1]))
    queue.open()
    asyncio.run(queue.put([{"claimed": True}]))
    assert queue.get(1.0) is not None          # claimed, never acked
    asyncio.run(queue.put([{"committed": True}]))
    print("returned", flush=True)
    time.sleep(60)                             # killed here
    """
)


def test_put_that_returned_survives_sigkill(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_PRODUCER, str(tmp_path / "q")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "returned"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait(10)
        assert child.stdout is not None
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL

    queue = DurableQueue(tmp_path / "q")
    queue.open()
    try:
        assert events_of(drain(queue)) == [{"claimed": True}, {"committed": True}]
    finally:
        queue.close()


async def test_release_hands_the_item_out_again_first(make_queue: Any) -> None:
    queue = make_queue(commit_wait_ms=0)
    await queue.put([{"k": 1}])
    await queue.put([{"k": 2}])
    first = queue.get(1.0)
    assert first is not None
    queue.release(first.id)
    again = queue.get(1.0)
    assert again is not None and (again.id, again.events) == (first.id, first.events)
    queue.ack(again.id)
    queue.release(again.id)  # already acked: ignored, not resurrected
    assert events_of(drain(queue)) == [{"k": 2}]
    assert queue.stats().items == 0


async def test_max_bytes_refuses_before_writing_and_resumes_after_acks(make_queue: Any) -> None:
    queue = make_queue(max_bytes=5000, commit_wait_ms=0)
    batch = [{"pad": "x" * 900}]
    accepted = 0
    with pytest.raises(BackpressureError) as refused:
        for _ in range(10):
            await queue.put(batch)
            accepted += 1
    assert refused.value.retry_after is not None and refused.value.retry_after > 0
    stats = queue.stats()
    assert stats.refusing and stats.items == accepted and stats.bytes <= 5000
    assert accepted >= 3
    with pytest.raises(BackpressureError):  # still refusing: nothing was acked
        await queue.put([{"small": 1}])
    assert queue.stats().items == accepted  # the refused batches were not written

    for _ in range(2):  # the sender keeps draining; acks free room
        item = queue.get(1.0)
        assert item is not None
        queue.ack(item.id)
    assert not queue.stats().refusing
    await queue.put([{"after": 1}])
    assert len(events_of(drain(queue))) == accepted - 2 + 1


async def test_batch_larger_than_max_bytes_waits_for_an_empty_queue(make_queue: Any) -> None:
    queue = make_queue(max_bytes=1000, commit_wait_ms=0)
    await queue.put([{"small": 1}])
    with pytest.raises(BackpressureError):
        await queue.put([{"pad": "x" * 2000}])
    assert queue.stats().items == 1
    assert len(drain(queue)) == 1
    # Into an empty queue it goes (as with MemoryQueue): never refused forever.
    await queue.put([{"pad": "x" * 2000}])
    assert queue.stats().items == 1


async def test_acked_rows_are_deleted_from_the_table(tmp_path: Path, make_queue: Any) -> None:
    legacy = tmp_path / "q" / "queue.db"  # as older collectors left it: an index on status
    legacy.parent.mkdir()
    with sqlite3.connect(legacy) as conn:
        conn.execute(
            f"CREATE TABLE {TABLE} (_id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB, timestamp FLOAT, status INTEGER)"
        )
        conn.execute(f"CREATE INDEX `{TABLE}_status` ON {TABLE} (status)")
    conn.close()
    queue = make_queue(commit_wait_ms=0)
    db = queue.db_path
    assert rows(db, "SELECT name FROM sqlite_master WHERE type = 'index'") == []
    for i in range(20):
        await queue.put([{"i": i}])
    for left in range(19, -1, -1):
        item = queue.get(1.0)
        assert item is not None
        queue.ack(item.id)
        # Gone at once, not marked acked for a later clean-up: get() never scans past old rows.
        assert rows(db, f"SELECT count(*) FROM {TABLE}")[0][0] == left
    assert queue.get(0) is None


@pytest.mark.parametrize(("durability", "expected"), [("full", 2), ("relaxed", 1)])
async def test_commits_use_the_durability_and_claims_and_acks_cost_no_fsync(
    make_queue: Any, durability: str, expected: int
) -> None:
    """Each put's commit is synchronous=FULL (NORMAL when relaxed); get and ack never mark a row
    with an UPDATE, and the ack's DELETE commits with synchronous=NORMAL (no fsync of its own)."""
    disk = Disk()
    queue = make_queue(durability=durability, commit_wait_ms=0, on_connect=disk)
    await queue.put([{"k": 1}])
    item = queue.get(1.0)
    assert item is not None
    queue.ack(item.id)

    [writer] = disk.ran("INSERT")
    assert writer.execute("PRAGMA synchronous").fetchone()[0] == expected
    assert writer.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert disk.ran("UPDATE") == []
    [acker] = disk.ran("DELETE FROM `ack_queue_queue` WHERE _id")
    assert acker.execute("PRAGMA synchronous").fetchone()[0] == 1
    for conn in disk.connections:  # the short WAL that lets a queue drain a disk it filled
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == 1024 * 1024


def insert_raw(db: Path, data: bytes) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(f"INSERT INTO {TABLE} (data, timestamp, status) VALUES (?, ?, 0)", (data, time.time()))
    conn.close()


async def test_unreadable_items_are_quarantined(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    queue = DurableQueue(tmp_path / "q", commit_wait_ms=0)
    queue.open()
    await queue.put([{"k": "before"}])
    queue.close()
    garbage = b"\x00\xffnot json at all"
    broken_body = b'{"t":1700000000.5,"n":1,"e":[{"k":'  # truncated
    insert_raw(queue.db_path, garbage)
    insert_raw(queue.db_path, broken_body)

    caplog.set_level(logging.ERROR, logger="collector.runtime.queue")
    queue.open()
    try:
        await queue.put([{"k": "after"}])
        # The header check at open() catches the garbage, get() the broken body.
        assert events_of(drain(queue)) == [{"k": "before"}, {"k": "after"}]
        stats = queue.stats()
        assert (stats.quarantined, stats.items) == (2, 0)
    finally:
        queue.close()
    quarantined = sorted(p.read_bytes() for p in (tmp_path / "q" / "quarantine").iterdir())
    assert quarantined == sorted([garbage, broken_body])
    assert sum("quarantined" in r.getMessage() for r in caplog.records) == 2
    assert rows(queue.db_path, f"SELECT count(*) FROM {TABLE}")[0][0] == 0


def damage_not_a_database(db: Path) -> None:
    db.write_bytes(b"this is not an SQLite database" * 200)


def damage_pages(db: Path) -> None:
    """A real database whose table pages are overwritten: 'malformed'."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute(
            f"CREATE TABLE {TABLE} (_id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB, timestamp FLOAT, status INTEGER)"
        )
        for _ in range(50):
            conn.execute(f"INSERT INTO {TABLE} (data, timestamp, status) VALUES (?, 0, 1)", (b"x" * 3000,))
    conn.close()
    with open(db, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xde\xad\xbe\xef" * 4096)


@pytest.mark.parametrize("damage", [damage_not_a_database, damage_pages])
async def test_damaged_database_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Any) -> None:
    directory = tmp_path / "q"
    directory.mkdir()
    damage(directory / "queue.db")
    original = (directory / "queue.db").read_bytes()

    caplog.set_level(logging.ERROR, logger="collector.runtime.queue")
    queue = DurableQueue(directory)
    queue.open()
    try:
        assert queue.databases_moved_aside == 1
        [aside] = directory.glob("queue.db.corrupt-*")
        # Kept for a post-mortem (SQLite may have rewritten the 100-byte header).
        assert aside.read_bytes()[100:] == original[100:]
        assert any("damaged" in r.getMessage() for r in caplog.records)
        await queue.put([{"k": 1}])
        assert events_of(drain(queue)) == [{"k": 1}]
    finally:
        queue.close()


async def test_disk_full_refuses_then_recovers(make_queue: Any) -> None:
    disk = Disk()
    queue = make_queue(commit_wait_ms=20, on_connect=disk)
    queue.disk_full_retry_s = 0.2  # 1 s by default
    await queue.put([{"k": "kept"}])
    disk.full()
    attempts = len(disk.ran("INSERT"))
    results = await asyncio.gather(
        *(queue.put([{"k": i, "pad": "x" * 5000}]) for i in range(3)), return_exceptions=True
    )
    assert len(disk.ran("INSERT")) == attempts + 1  # one group, one failed commit
    assert all(isinstance(r, BackpressureError) and "disk full" in str(r) for r in results), results
    assert queue.stats().refusing
    with pytest.raises(BackpressureError) as refused:  # refused without a write
        await queue.put([{"k": "refused"}])
    assert refused.value.retry_after is not None and 0 < refused.value.retry_after <= 0.2
    assert len(disk.ran("INSERT")) == attempts + 1

    disk.space_again()
    await asyncio.sleep(0.25)
    await queue.put([{"k": "recovered"}])
    assert not queue.stats().refusing
    assert events_of(drain(queue)) == [{"k": "kept"}, {"k": "recovered"}]


async def test_other_commit_errors_reach_every_producer_of_the_group(make_queue: Any) -> None:
    disk = Disk()
    queue = make_queue(commit_wait_ms=20, on_connect=disk)
    disk.failing = True  # every statement is interrupted: not a full disk
    results = await asyncio.gather(*(queue.put([{"k": i}]) for i in range(3)), return_exceptions=True)
    assert [type(r) for r in results] == [sqlite3.OperationalError] * 3
    assert not queue.stats().refusing
    disk.failing = False
    await queue.put([{"k": "next"}])
    assert events_of(drain(queue)) == [{"k": "next"}]


async def test_unserialisable_batch_fails_alone(make_queue: Any) -> None:
    queue = make_queue(commit_wait_ms=20)
    results = await asyncio.gather(queue.put([{"ok": 1}]), queue.put([{"bad": object()}]), return_exceptions=True)
    assert results[0] is None and isinstance(results[1], TypeError)
    assert events_of(drain(queue)) == [{"ok": 1}]


async def test_put_requires_open_and_close_finishes_pending(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / "q", commit_wait_ms=200)
    with pytest.raises(RuntimeError):
        await queue.put([{"k": 1}])
    queue.open()
    put = asyncio.ensure_future(queue.put([{"k": 1}]))
    await asyncio.sleep(0.01)  # waiting in the writer's gathering window
    await asyncio.to_thread(queue.close)
    await put  # committed by close(), not dropped
    with pytest.raises(BackpressureError):  # receivers answer 503 while stopping
        await queue.put([{"k": 2}])
    queue.open()
    try:
        assert events_of(drain(queue)) == [{"k": 1}]
    finally:
        queue.close()


def test_persist_queue_still_has_the_shape_queue_table_relies_on(tmp_path: Path) -> None:
    """Fails loudly if a persist-queue upgrade changes what QueueTable builds on
    (see collector/runtime/queue/storage.py): its connection factory, its table and columns,
    put() returning the row id, and clear_acked_data() deleting acked rows."""
    from importlib.metadata import version

    from persistqueue.sqlackqueue import AckStatus, SQLiteAckQueue

    from collector.runtime.queue.storage import QueueTable, RawBytes
    from collector.sqlite import Pragmas

    assert int(version("persist-queue").split(".")[0]) == 1, "a new major: re-read persistqueue/sqlackqueue.py"
    factory = inspect.signature(SQLiteAckQueue._new_db_connection)
    assert list(factory.parameters) == ["self", "path", "multithreading", "timeout"]
    assert (SQLiteAckQueue._TABLE_NAME, SQLiteAckQueue._KEY_COLUMN, AckStatus.acked) == ("ack_queue", "_id", "5")

    disk = Disk()
    table = QueueTable(
        tmp_path, name="shape", db_file_name="shape.db", pragmas=Pragmas(synchronous="FULL"), on_connect=disk
    )
    try:
        assert table._table_name == "`ack_queue_shape`"
        columns = {
            row[1]: (row[2], row[5]) for row in rows(tmp_path / "shape.db", "PRAGMA table_info(ack_queue_shape)")
        }
        assert columns["_id"] == ("INTEGER", 1) and columns["data"][0] == "BLOB" and columns["status"][0] == "INTEGER"

        # The factory made every connection persist-queue writes through (so our pragmas hold there).
        item_id = table.put(b"payload")
        assert isinstance(item_id, int) and table.read(item_id) == b"payload"
        [writer] = disk.ran("INSERT")
        assert writer is not table.side and writer.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert rows(tmp_path / "shape.db", "SELECT status FROM ack_queue_shape WHERE _id = ?", item_id) == [(0,)]
        assert table.headers() == [(item_id, b"payload", 7)]

        # Rows acked by persist-queue's own ack() (older collectors) are what clear_acked_data() removes.
        acked = table.put(b"acked")
        assert table.ack(id=acked) == acked
        table.clear_acked_data(max_delete=0, keep_latest=0)
        assert table.read(acked) is None and table.read(item_id) == b"payload"
        assert RawBytes.loads(RawBytes.dumps(b"\x00raw")) == b"\x00raw"
    finally:
        table.close()


async def test_several_items_are_acked_in_one_transaction(make_queue: Any, tmp_path: Path) -> None:
    queue = make_queue(commit_wait_ms=0)
    for i in range(1203):  # more ids than one DELETE statement takes (500 each)
        await queue.put([{"id": f"e{i}"}])
    items = [queue.get(0) for _ in range(1203)]
    assert all(item is not None for item in items)
    ids = [item.id for item in items if item is not None]
    statements: list[str] = []
    conn = queue._require_storage()._side()
    conn.set_trace_callback(statements.append)
    try:
        queue.ack(*ids[:3])
        queue.ack(*ids[3:])
    finally:
        conn.set_trace_callback(None)
    assert sum(1 for s in statements if s.startswith("BEGIN")) == 1  # the 1,200 in chunks, in one transaction
    assert sum(1 for s in statements if s.startswith("DELETE")) == 1 + 3
    assert (queue.stats().items, queue.stats().events, queue.stats().bytes) == (0, 0, 0)
    assert rows(
        tmp_path / "q" / f"{queue.name}.db", f"SELECT count(*) FROM {queue._require_storage()._table_name}"
    ) == [(0,)]
    queue.ack()  # nothing: no statement, no error
