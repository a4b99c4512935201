"""`collector queue list|drain`, the storage lock and the storage watch, in-process.

The end-to-end stories (a renamed exporter drained and delivered, two
collectors on one directory, the directory deleted under a running one)
are tests/e2e/test_storage_hardening.py; these pin the edges.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from collector.cli.main import main
from collector.errors import BackpressureError
from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.layout import StorageLayout
from collector.runtime.queue.memory import MemoryQueue
from collector.runtime.queue.sqlite import DurableQueue
from collector.runtime.storage_lock import StorageLock, StorageLockedError
from collector.runtime.storage_watch import StorageWatch, WatchedQueue
from collector.testing import eventually_sync


def ev(i: int) -> dict:
    return {"specversion": "1.0", "id": f"q-{i}", "source": "queue-cli", "type": "t", "subject": "s"}


def fill_queue(queue_dir: Path, batches: list[list[dict]]) -> None:
    async def put() -> None:
        q = DurableQueue(queue_dir)
        q.open()
        try:
            for batch in batches:
                await q.put(batch)
        finally:
            q.close()

    asyncio.run(put())


def queued_ids(queue_dir: Path) -> list[str]:
    q = DurableQueue(queue_dir)
    q.open()
    out = []
    try:
        while (item := q.get(0.0)) is not None:
            out.extend(e["id"] for e in item.events)
    finally:
        q.close()
    return out


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, StorageLayout]:
    for var in list(os.environ):
        if var.startswith(("COLLECTOR_", "OPENMETER_")):
            monkeypatch.delenv(var)
    storage = tmp_path / "data"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"""
receivers: {{http: {{endpoint: "127.0.0.1:0"}}}}
exporters:
  debug/new: {{path: "{tmp_path / "out.jsonl"}"}}
  debug/mem: {{path: "{tmp_path / "mem.jsonl"}", queue: {{kind: memory}}}}
storage: {{directory: "{storage}"}}
service: {{pipelines: {{p: {{receivers: [http], exporters: [debug/new, debug/mem]}}}}}}
"""
    )
    layout = StorageLayout(storage)
    # What a removed exporter "debug/old" left: 25 events in 3 items, and 3 dead letters.
    fill_queue(
        layout.exporter_queue("debug/old"), [[ev(i) for i in range(10)], [ev(10)], [ev(i) for i in range(11, 25)]]
    )
    store = DeadLetterStore(layout.exporter_deadletters("debug/old"))
    store.add([ev(100), ev(101)], "rejected", status=400, body='{"detail":"bad"}')
    store.add([ev(102)], "max_age")
    store.close()
    return cfg, layout


def test_list_shows_every_directory_with_its_counts(setup, capsys):
    cfg, layout = setup
    assert main(["queue", "list", "-c", str(cfg), "--json"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["debug__old"]["orphaned"] is True and rows["debug__old"]["exporter"] is None
    assert (rows["debug__old"]["queue_events"], rows["debug__old"]["queue_items"]) == (25, 3)
    assert rows["debug__old"]["dead_letters"] == 3
    assert rows["debug__new"] | {"path": None} == {
        "name": "debug__new",
        "exporter": "debug/new",
        "orphaned": False,
        "path": None,
        "queue_items": 0,
        "queue_events": 0,
        "dead_letters": 0,
    }
    # Listing only reads: nothing was created for the configured exporters.
    assert not layout.exporter_dir("debug/new").exists()


def test_drain_moves_events_and_dead_letters_then_removes_the_old_directory(setup, capsys):
    cfg, layout = setup
    assert main(["queue", "drain", "debug/old", "--to", "debug/new", "-c", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "moved 25 event(s) from exporters/debug__old" in out and "3 dead letter(s)" in out, out
    assert not layout.exporter_dir("debug/old").exists()
    assert queued_ids(layout.exporter_queue("debug/new")) == [f"q-{i}" for i in range(25)]
    store = DeadLetterStore(layout.exporter_deadletters("debug/new"))
    try:
        moved = [(d.event["id"], d.reason, d.status, d.body) for d in store.list()]
    finally:
        store.close()
    assert moved == [
        ("q-100", "rejected", 400, '{"detail":"bad"}'),
        ("q-101", "rejected", 400, '{"detail":"bad"}'),
        ("q-102", "max_age", None, None),
    ]


def test_drain_keeps_what_it_cannot_move(setup, capsys):
    cfg, layout = setup
    quarantined = layout.exporter_queue("debug/old") / "quarantine" / "queue-7-1.bin"
    quarantined.parent.mkdir()
    quarantined.write_bytes(b"garbage")
    assert main(["queue", "drain", "debug__old", "--to", "debug/new", "-c", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "kept in exporters/debug__old: queue/quarantine/queue-7-1.bin" in out, out
    assert quarantined.exists()
    assert len(queued_ids(layout.exporter_queue("debug/new"))) == 25


@pytest.mark.parametrize(
    ("old", "to", "message"),
    [
        ("debug/old", "debug/nope", "no exporter 'debug/nope' in a pipeline"),
        ("debug/new", "debug/new", "is the directory of configured exporter 'debug/new'"),
        ("debug/gone", "debug/new", "no directory exporters/debug__gone"),
        ("debug/old", "debug/mem", "has no durable queue"),
    ],
)
def test_drain_refuses_what_it_cannot_do(setup, capsys, old, to, message):
    cfg, layout = setup
    assert main(["queue", "drain", old, "--to", to, "-c", str(cfg)]) == 2
    assert message in capsys.readouterr().err
    assert len(queued_ids(layout.exporter_queue("debug/old"))) == 25


def test_drain_refuses_while_the_storage_is_locked(setup, capsys):
    cfg, layout = setup
    with StorageLock(layout.root):
        assert main(["queue", "drain", "debug/old", "--to", "debug/new", "-c", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert f"in use by another collector (pid {os.getpid()})" in err, err
    assert len(queued_ids(layout.exporter_queue("debug/old"))) == 25


def test_lock_is_exclusive_and_freed_when_the_holder_dies(tmp_path):
    with StorageLock(tmp_path), pytest.raises(StorageLockedError) as caught:
        StorageLock(tmp_path).acquire()
    assert caught.value.holder == os.getpid()
    assert f"pid {os.getpid()}" in str(caught.value)
    # A holder killed with SIGKILL leaves the file, never the lock.
    code = (
        "import sys, time; from pathlib import Path; from collector.runtime.storage_lock import StorageLock; "
        "StorageLock(Path(sys.argv[1])).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StorageLockedError) as caught:
            StorageLock(tmp_path).acquire()
        assert caught.value.holder == holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    with StorageLock(tmp_path) as lock:
        assert lock.held
    assert (tmp_path / "collector.lock").exists()


@pytest.mark.parametrize("how", ["deleted", "replaced"])
def test_watched_queue_refuses_intake_once_a_database_is_lost(tmp_path, how):
    db = tmp_path / "exporters" / "x" / "queue" / "queue.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(b"")
    watch = StorageWatch(tmp_path, [db])
    watch.interval_s = 0.01
    queue = WatchedQueue(MemoryQueue(max_bytes=1 << 20), watch)
    watch.start()
    try:
        queue.check_intake()
        db.unlink()
        if how == "replaced":
            db.write_bytes(b"")
        eventually_sync(lambda: watch.lost is not None, timeout=5, message="the watch noticed")
    finally:
        watch.stop()
    with pytest.raises(BackpressureError) as caught:
        queue.check_intake()
    assert f"exporters/x/queue/queue.db was {how}" in caught.value.message
    assert watch.health() == {"directory": str(tmp_path), "lost": caught.value.message}
