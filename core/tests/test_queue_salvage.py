"""A damaged queue database is salvaged, not set aside whole (docs/delivery.md, "Corruption and quarantine").

Issue 10, point 3: a queue file with a few damaged pages used to be moved
aside whole at start-up, its readable rows included, with only a log line.
Now every readable item goes into the fresh queue, the unreadable rows are
counted as quarantined, the metric and ``/health`` say so, and an item that
becomes unreadable while running is quarantined instead of staying claimed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from collector.cli.main import main
from collector.runtime.layout import StorageLayout
from collector.runtime.queue.sqlite import DurableQueue
from collector.testing import eventually

TABLE = "ack_queue_queue"  # persist-queue's table for name="queue"
EVENTS_PER_ITEM = 10
ITEMS = 1000  # 10,000 events


def ev(i: int) -> dict[str, Any]:
    return {"specversion": "1.0", "id": f"e{i}", "source": "test", "type": "t", "subject": "s"}


async def fill(directory: Path) -> None:
    """A closed 10,000-event queue (1,000 items) in ``directory``, WAL folded into the file."""
    queue = DurableQueue(directory, durability="relaxed", commit_wait_ms=0)
    queue.open()
    try:
        for item in range(ITEMS):
            await queue.put([ev(item * EVENTS_PER_ITEM + k) for k in range(EVENTS_PER_ITEM)])
    finally:
        queue.close()


def damage_middle_page(db: Path) -> None:
    """Overwrite one whole page in the middle of the file (a table leaf page)."""
    page_size = 4096
    pages = db.stat().st_size // page_size
    with open(db, "r+b") as handle:
        handle.seek((pages // 2) * page_size)
        handle.write(b"\xde\xad\xbe\xef" * (page_size // 4))


def ids_of(events: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in events]


async def test_damaged_queue_is_salvaged_into_the_new_queue_and_reported(collector_run_pipeline, collector_storage):
    directory = StorageLayout(collector_storage).exporter_queue("memory")
    await fill(directory)
    damage_middle_page(directory / "queue.db")
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):  # the damage is real
        conn = sqlite3.connect(directory / "queue.db")
        try:
            conn.execute(f"SELECT count(*), sum(length(data)) FROM {TABLE}").fetchall()
        finally:
            conn.close()

    config = (
        "receivers: {scripted: {}}\n"
        "exporters: {memory: {queue: {kind: durable, min_free_bytes: 0}, batch: {period: 0.01, max_events: 500}}}\n"
    )
    async with collector_run_pipeline(config) as p:
        runner = p.service.exporters["memory"]
        salvaged = p.metric("collector_queue_salvaged_events_total", exporter="memory")
        quarantined = p.metric("collector_queue_quarantined_items_total", exporter="memory")
        assert salvaged >= 0.99 * ITEMS * EVENTS_PER_ITEM, salvaged
        assert quarantined >= 1  # the rows on the damaged page: unreadable, counted
        await p.exporter().wait_for(int(salvaged), timeout=30)
        # Acks share the sender's one I/O thread with its waiting reads: ~10 ms an item here.
        await eventually(lambda: runner.health()["queue"]["events"] == 0, timeout=60)
        delivered = ids_of(p.exporter().events)
        assert len(delivered) == len(set(delivered)) == salvaged  # every readable event, once
        assert set(delivered) <= {f"e{i}" for i in range(ITEMS * EVENTS_PER_ITEM)}
        health = runner.health()["queue"]
        assert health["salvaged_events"] == salvaged
        assert health["quarantined"] == quarantined
        [kept] = health["damaged_files"]
        assert Path(kept).name.startswith("queue.db.corrupt-") and Path(kept).exists()
        # Not "ready as if nothing happened", but not a reason to refuse traffic either.
        assert p.service.health()["ready"]


async def test_salvage_command_recovers_an_old_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    storage = tmp_path / "data"
    old = tmp_path / "old"
    await fill(old)
    damage_middle_page(old / "queue.db")
    aside = old / "queue.db.corrupt-20240101T000000Z"
    (old / "queue.db").rename(aside)
    config = tmp_path / "collector.yaml"
    config.write_text(
        f"storage: {{directory: {storage}}}\n"
        "receivers: {http: {endpoint: '127.0.0.1:0'}}\n"
        "exporters: {openmeter: {url: 'http://127.0.0.1:9', token: abcdefgh}}\n"
        "service: {pipelines: {p: {receivers: [http], exporters: [openmeter]}}}\n"
    )
    assert main(["queue", "salvage", str(aside), "--to", "openmeter", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    queue = DurableQueue(StorageLayout(storage).exporter_queue("openmeter"))
    queue.open()
    try:
        events = queue.stats().events
        assert events >= 0.99 * ITEMS * EVENTS_PER_ITEM
        assert f"{events} event(s)" in out, out
        seen: list[str] = []
        while (item := queue.get(0.0)) is not None:
            seen.extend(ids_of(item.events))
            queue.ack(item.id)
        assert len(seen) == len(set(seen)) == events
    finally:
        queue.close()
    assert aside.exists()  # kept: the command reads it, never changes or deletes it


async def test_item_unreadable_while_running_is_quarantined_and_the_sender_moves_on(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / "q", commit_wait_ms=0)
    queue.open()
    try:
        for i in range(3):
            await queue.put([ev(i)])
        second = _damage_row(queue, 1)
        got = []
        while (item := queue.get(0.2)) is not None:
            got.extend(ids_of(item.events))
            queue.ack(item.id)
        assert got == ["e0", "e2"]
        stats = queue.stats()
        assert (stats.items, stats.events, stats.quarantined) == (0, 0, 1)  # not claimed forever
        assert any(str(second) in p.name for p in (tmp_path / "q" / "quarantine").iterdir())
    finally:
        queue.close()


def _damage_row(queue: DurableQueue, index: int) -> int:
    """Make the row of the ``index``-th item unreadable, as a page gone bad would: any SELECT touching it fails."""
    table = queue._pq
    assert table is not None
    read, read_many = table.read, table.read_many
    bad = sorted(queue._meta)[index]

    def damaged(item_id: int) -> bytes | None:
        if item_id == bad:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return read(item_id)

    def damaged_many(item_ids):
        if bad in item_ids:
            raise sqlite3.DatabaseError("database disk image is malformed")
        return read_many(item_ids)

    table.read = damaged  # type: ignore[method-assign]
    table.read_many = damaged_many  # type: ignore[method-assign]
    return bad


async def test_a_damaged_row_among_items_read_together_costs_only_that_item(tmp_path: Path) -> None:
    queue = DurableQueue(tmp_path / "q", commit_wait_ms=0)
    queue.open()
    try:
        for i in range(5):
            await queue.put([ev(i)])
        _damage_row(queue, 2)
        items = queue.get_many(0.2, 100)  # one SELECT fails: read one by one, the others still go out
        assert [ids_of(item.events) for item in items] == [["e0"], ["e1"], ["e3"], ["e4"]]
        queue.ack(*(item.id for item in items))
        stats = queue.stats()
        assert (stats.items, stats.events, stats.quarantined) == (0, 0, 1)
    finally:
        queue.close()
