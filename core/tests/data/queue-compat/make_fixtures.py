"""Write the on-disk compatibility fixtures that core/tests/test_queue_compat.py opens.

Run ONCE per on-disk format, with the version that writes it, and commit the
result (docs/upgrades.md, "The on-disk format across versions")::

    .venv/bin/python core/tests/data/queue-compat/make_fixtures.py 0.2.0
    .venv/bin/python core/tests/data/queue-compat/make_fixtures.py ack-status

``0.2.0``: a storage directory as collector 0.2 leaves it, written by today's
code (DurableQueue, DeadLetterStore, the pull receivers' StateStore), laid out
by StorageLayout.  ``ack-status``: a queue as older collectors left it, which
acknowledged through persist-queue's own get()/ack()/nack() (rows marked
``status`` = acked instead of deleted, an index on ``status``), built through
persist-queue's API the way they did.

Each directory gets ``expected.json``: what was written and what a newer
collector must read back.  Never regenerate an existing directory: the point
is that future versions are tested against the bytes an old version wrote.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
EXPORTER = "openmeter"
RECEIVER = "prometheus"


def event(n: int) -> dict[str, Any]:
    """A CloudEvent with the shapes a round trip could mangle: unicode, floats, nesting, a big integer."""
    return {
        "specversion": "1.0",
        "id": f"compat-{n:04d}",
        "source": "queue-compat",
        "type": "api-calls",
        "subject": f"customer-{n % 3}",
        "time": f"2023-11-14T22:{n // 60 % 60:02d}:{n % 60:02d}Z",
        "data": {"calls": n, "duration_ms": n * 1.25, "path": f"/v1/çà/{n}", "tags": ["a", {"k": n}], "big": 2**53 + n},
    }


def batches(sizes: list[int], start: int = 0) -> list[list[dict[str, Any]]]:
    out, n = [], start
    for size in sizes:
        out.append([event(n + i) for i in range(size)])
        n += size
    return out


def make_current(root: Path) -> dict[str, Any]:
    """Today's writers, on a storage directory laid out as a running collector lays it out."""
    from collector.clock import FakeClock
    from collector.pull import WATERMARKS
    from collector.runtime.deadletters import DeadLetterStore
    from collector.runtime.layout import StorageLayout
    from collector.runtime.queue.sqlite import DurableQueue
    from collector.state import StateStore

    layout = StorageLayout(root)
    clock = FakeClock(1_700_000_000.0)
    queue = DurableQueue(layout.exporter_queue(EXPORTER), clock=clock)
    written = batches([3, 2, 4, 1])
    stamps: list[float] = []

    async def fill() -> None:
        for batch in written:  # one put at a time: one queue item each
            stamps.append(clock.time())
            await queue.put(batch)
            clock.advance(7.5)

    queue.open()
    try:
        asyncio.run(fill())
        first = queue.get(timeout=1.0)
        assert first is not None and first.events == written[0]
        queue.ack(first.id)  # delivered: today's ack deletes the row
        second = queue.get(timeout=1.0)
        assert second is not None
        queue.release(second.id)  # a send that failed: stays queued
    finally:
        queue.close()

    dead = DeadLetterStore(layout.exporter_deadletters(EXPORTER))
    try:
        dead.add([event(100), event(101)], "rejected", status=400, body='{"title":"invalid event"}')
        dead.add([event(102)], "max_age")
        letters = [d.as_dict() for d in dead.list()]
    finally:
        dead.close()

    state = StateStore(layout.pull_state(RECEIVER))
    try:
        state.put(WATERMARKS, RECEIVER, 1_700_003_600.0)
    finally:
        state.close()

    return {
        "written_by": "collector 0.2.0 (DurableQueue, DeadLetterStore, StateStore)",
        "exporter": EXPORTER,
        "queue": {
            "items": [{"enqueued_at": t, "events": b} for t, b in zip(stamps[1:], written[1:], strict=True)],
            "acknowledged_ids": [e["id"] for e in written[0]],
        },
        "dead_letters": letters,
        "pull_state": {"receiver": RECEIVER, "namespace": WATERMARKS, "watermark": 1_700_003_600.0},
    }


class _RawBytes:
    """The pass-through serializer older collectors gave persist-queue (payloads are orjson bytes)."""

    @staticmethod
    def dumps(value: bytes, sort_keys: bool = False) -> bytes:
        return value

    @staticmethod
    def loads(value: bytes) -> bytes:
        return value


def make_ack_status(root: Path) -> dict[str, Any]:
    """A queue acknowledged through persist-queue's ack(): acked rows stay, marked by ``status``."""
    from persistqueue.sqlackqueue import SQLiteAckQueue

    directory = root / "exporters" / EXPORTER / "queue"
    directory.mkdir(parents=True)
    pq = SQLiteAckQueue(
        str(directory),
        name="queue",
        db_file_name="queue.db",
        multithreading=True,
        serializer=_RawBytes,
        auto_resume=True,
    )
    # Older collectors indexed status for clear_acked_data(); today's drops the index.
    with sqlite3.connect(directory / "queue.db") as conn:
        conn.execute("CREATE INDEX IF NOT EXISTS `ack_queue_queue_status` ON `ack_queue_queue` (status)")
    written = batches([2, 3, 1, 2, 4])
    stamps = [1_600_000_000.0 + 60 * i for i in range(len(written))]
    for stamp, batch in zip(stamps, written, strict=True):
        pq.put(orjson.dumps({"t": stamp, "n": len(batch), "e": batch}))
    fate = ["acked", "acked", "in flight", "nacked", "never claimed"]
    for what in fate[:4]:
        item = pq.get(block=False, raw=True)
        if what == "acked":
            pq.ack(id=item["pqid"])
        elif what == "nacked":
            pq.nack(id=item["pqid"])
        # "in flight": claimed (status unack) when the collector stopped
    pq.close()
    with sqlite3.connect(directory / "queue.db") as conn:
        statuses = [int(s) for (s,) in conn.execute("SELECT status FROM ack_queue_queue ORDER BY _id")]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    kept = [i for i, what in enumerate(fate) if what != "acked"]
    return {
        "written_by": "persist-queue 1.1.0 SQLiteAckQueue put/get/ack/nack, as collectors before 0.2 used it",
        "exporter": EXPORTER,
        "rows": [{"fate": f, "status": s} for f, s in zip(fate, statuses, strict=True)],
        "queue": {
            "items": [{"enqueued_at": stamps[i], "events": written[i]} for i in kept],
            "acknowledged_ids": [e["id"] for i, what in enumerate(fate) if what == "acked" for e in written[i]],
        },
    }


MAKERS = {"0.2.0": make_current, "ack-status": make_ack_status}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in MAKERS:
        print(f"usage: make_fixtures.py {{{'|'.join(MAKERS)}}}", file=sys.stderr)
        return 2
    root = HERE / argv[0]
    if root.exists():
        print(f"{root} exists: fixtures are written once and never regenerated", file=sys.stderr)
        return 1
    expected = MAKERS[argv[0]](root / "storage")
    for leftover in (root / "storage").rglob("*"):
        if leftover.name.endswith(("-wal", "-shm")) and leftover.stat().st_size == 0:
            leftover.unlink()  # empty after the checkpoint; SQLite recreates them
    (root / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
