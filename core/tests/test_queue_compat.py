"""Storage written by older collectors opens in this one (docs/upgrades.md).

The fixtures under ``core/tests/data/queue-compat/`` were written once, by the
version each is named after, with ``make_fixtures.py`` beside them, and are
committed: a change that makes today's code misread them fails here.  Each
test works on a copy, since opening a queue rewrites it (acked rows deleted).

The backup procedures of docs/upgrades.md ("Backup and restore") are run
here as written: the shell blocks marked ``<!-- test: backup-... -->``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from collector.pull import WATERMARKS
from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.layout import StorageLayout
from collector.runtime.queue.sqlite import DurableQueue
from collector.runtime.storage_lock import StorageLock
from collector.state import StateStore

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).parent / "data" / "queue-compat"
UPGRADES = ROOT / "docs" / "upgrades.md"
QUEUE_FORMATS = ["0.2.0", "ack-status"]


def storage_copy(fixture: str, tmp_path: Path) -> tuple[StorageLayout, dict[str, Any]]:
    """A writable copy of a fixture's storage directory, and what was written into it."""
    root = tmp_path / "storage"
    shutil.copytree(FIXTURES / fixture / "storage", root)
    expected = json.loads((FIXTURES / fixture / "expected.json").read_text(encoding="utf-8"))
    return StorageLayout(root), expected


def drain(queue: DurableQueue) -> list[tuple[float, list[dict[str, Any]]]]:
    """Every item the queue hands out, acknowledged one by one, as a sender does."""
    out = []
    while (item := queue.get(timeout=0.05)) is not None:
        out.append((item.enqueued_at, item.events))
        queue.ack(item.id)
    return out


@pytest.mark.parametrize("fixture", QUEUE_FORMATS)
def test_an_old_queue_opens_with_its_unacknowledged_events_in_order(fixture: str, tmp_path: Path) -> None:
    layout, expected = storage_copy(fixture, tmp_path)
    items = expected["queue"]["items"]
    queue = DurableQueue(layout.exporter_queue(expected["exporter"]))
    queue.open()
    try:
        stats = queue.stats()
        assert stats.items == len(items)
        assert stats.events == sum(len(i["events"]) for i in items)
        # collector_queue_bytes: the stored payloads, as the old version wrote them
        assert stats.bytes == sum(
            len(json.dumps(i, separators=(",", ":"), ensure_ascii=False).encode())
            for i in [{"t": it["enqueued_at"], "n": len(it["events"]), "e": it["events"]} for it in items]
        )
        assert stats.quarantined == 0
        got = drain(queue)
    finally:
        queue.close()
    assert got == [(i["enqueued_at"], i["events"]) for i in items]
    delivered = {e["id"] for _, events in got for e in events}
    assert expected["queue"]["acknowledged_ids"] and not delivered & set(expected["queue"]["acknowledged_ids"])

    reopened = DurableQueue(layout.exporter_queue(expected["exporter"]))
    reopened.open()
    try:  # what was acknowledged after the upgrade stays acknowledged
        assert reopened.stats().events == 0
        assert reopened.get(timeout=0.05) is None
    finally:
        reopened.close()


def test_the_ack_status_fixture_holds_every_old_row_state() -> None:
    """The older form is only worth testing if it has acked, claimed, nacked and fresh rows (persist-queue's codes)."""
    rows = json.loads((FIXTURES / "ack-status" / "expected.json").read_text(encoding="utf-8"))["rows"]
    assert {r["status"] for r in rows} == {0, 1, 2, 5}


def test_old_dead_letters_open(tmp_path: Path) -> None:
    layout, expected = storage_copy("0.2.0", tmp_path)
    store = DeadLetterStore(layout.exporter_deadletters(expected["exporter"]))
    try:
        assert [d.as_dict() for d in store.list()] == expected["dead_letters"]
        assert store.count() == len(expected["dead_letters"])
    finally:
        store.close()


def test_an_old_pull_watermark_opens(tmp_path: Path) -> None:
    layout, expected = storage_copy("0.2.0", tmp_path)
    pull = expected["pull_state"]
    store = StateStore(layout.pull_state(pull["receiver"]))
    try:
        assert pull["namespace"] == WATERMARKS
        assert store.get(WATERMARKS, pull["receiver"]) == pull["watermark"]
    finally:
        store.close()


# -- backup and restore, as docs/upgrades.md writes it ------------------------------------------


def documented_block(name: str) -> str:
    text = UPGRADES.read_text(encoding="utf-8")
    match = re.search(rf"<!-- test: {re.escape(name)} -->\n```sh\n(.*?)^```", text, re.S | re.M)
    assert match, f"docs/upgrades.md has no block marked test: {name}"
    return match.group(1)


def run_documented(name: str, src: Path, dest: Path) -> None:
    """The block with its two settings pointed at the test's directories; everything else as written."""
    script = documented_block(name)
    for var, value in (("SRC", src), ("DEST", dest)):
        script, n = re.subn(rf"^{var}=\S+", f"{var}='{value}'", script, count=1, flags=re.M)
        assert n == 1, f"the {name} block no longer sets {var}="
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60, env=dict(os.environ)
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stderr}"


class LiveStorage:
    """A storage directory as a running collector holds it: locked, queue, dead letters and state open."""

    def __init__(self, root: Path) -> None:
        self.layout = StorageLayout(root)
        self.lock = StorageLock(root, self.layout.lock_file)
        self.lock.acquire()
        self.queue = DurableQueue(self.layout.exporter_queue("openmeter"))
        self.queue.open()
        self.dead = DeadLetterStore(self.layout.exporter_deadletters("openmeter"))
        self.state = StateStore(self.layout.pull_state("prometheus"))
        self.batches = [[{"id": f"live-{b}-{i}", "data": {"n": i, "s": "é" * b}} for i in range(50)] for b in range(20)]

        async def fill() -> None:
            for batch in self.batches:
                await self.queue.put(batch)

        asyncio.run(fill())
        self.dead.add([{"id": "dead-1"}], "rejected", status=422, body="no")
        self.state.put(WATERMARKS, "prometheus", 1_700_000_600.0)

    def close(self) -> None:
        self.state.close()
        self.dead.close()
        self.queue.close()
        self.lock.release()


def assert_restored(root: Path, live: LiveStorage) -> None:
    """The copy, opened where it was restored, holds what the live collector had committed."""
    layout = StorageLayout(root)
    with StorageLock(root, layout.lock_file):  # a restored directory is free for a collector to take
        queue = DurableQueue(layout.exporter_queue("openmeter"))
        queue.open()
        try:
            assert [events for _, events in drain(queue)] == live.batches
        finally:
            queue.close()
        dead = DeadLetterStore(layout.exporter_deadletters("openmeter"))
        try:
            assert [(d.event, d.reason, d.status) for d in dead.list()] == [({"id": "dead-1"}, "rejected", 422)]
        finally:
            dead.close()
        state = StateStore(layout.pull_state("prometheus"))
        try:
            assert state.get(WATERMARKS, "prometheus") == 1_700_000_600.0
        finally:
            state.close()


def test_the_live_backup_copies_a_running_collectors_storage(tmp_path: Path) -> None:
    live = LiveStorage(tmp_path / "live")
    try:
        # The commits are still in the write-ahead log: what a plain copy of queue.db would miss.
        assert (live.queue.db_path.with_name("queue.db-wal")).stat().st_size > 0
        run_documented("backup-live", tmp_path / "live", tmp_path / "backup")
        assert not (tmp_path / "backup" / "collector.lock").exists()
        # The collector goes on: an event acknowledged after the backup does not undo it.
        item = live.queue.get(timeout=1.0)
        assert item is not None
        live.queue.ack(item.id)
    finally:
        live.close()
    shutil.copytree(tmp_path / "backup", tmp_path / "restored")
    assert_restored(tmp_path / "restored", live)


def test_the_stopped_backup_copies_the_storage(tmp_path: Path) -> None:
    live = LiveStorage(tmp_path / "live")
    live.close()  # stopped
    run_documented("backup-stopped", tmp_path / "live", tmp_path / "backup")
    assert_restored(tmp_path / "backup", live)
