"""Dead letters keep the min_free_bytes reserve, limit their WAL, and a stuck sender shows (issue 10, point 6).

Dead letters written during a disk-nearly-full spell used to eat the reserve
that lets a queue drain (their WAL had no size limit); then every write failed
with "database or disk is full" and the sender retried forever while
``/health`` said ok.  The small-filesystem version of this is
tests/reliability/test_disk_full.py::test_enospc_dead_letters_keep_the_reserve_and_a_stuck_sender_shows.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest

from collector.clock import FakeClock
from collector.errors import PermanentError
from collector.runtime.admin import AdminServer
from collector.runtime.deadletters import DeadLetterDiskFullError, DeadLetterStore
from collector.testing import eventually

MORE_THAN_THE_DISK = 1 << 60


def ev(i: int) -> dict:
    return {"specversion": "1.0", "id": f"e{i}", "source": "test", "type": "t", "subject": "s"}


def test_dead_letter_writes_refuse_to_eat_the_reserve(tmp_path: Path) -> None:
    store = DeadLetterStore(tmp_path / "dl.sqlite", min_free_bytes=MORE_THAN_THE_DISK)
    try:
        with pytest.raises(DeadLetterDiskFullError, match="min_free_bytes"):
            store.add([ev(1)], "rejected", status=400, body="no")
        assert store.count() == 0
        # Dropping dead letters frees space: never refused.
        assert store.clear() == 0
        store.min_free_bytes = 0  # space returned
        assert store.add([ev(1)], "rejected", status=400, body="no") == 1
    finally:
        store.close()


def test_dead_letter_store_keeps_its_wal_short(tmp_path: Path) -> None:
    path = tmp_path / "dl.sqlite"
    store = DeadLetterStore(path, min_free_bytes=0)
    try:
        big = {**ev(0), "data": {"pad": "x" * 2000}}
        for _ in range(3000):  # ~6 MB through the WAL, one transaction each
            store.add([big], "rejected", status=400, body="no")
        wal = Path(f"{path}-wal")
        assert not wal.exists() or wal.stat().st_size <= 1536 * 1024, wal.stat().st_size
    finally:
        store.close()


async def test_a_sender_that_cannot_dead_letter_shows_in_health_and_ready(collector_run_pipeline) -> None:
    clock = FakeClock()
    config = (
        "receivers: {scripted: {}}\n"
        f"exporters: {{memory: {{queue: {{kind: memory, min_free_bytes: {MORE_THAN_THE_DISK}}}, "
        "batch: {period: 0.01}}}\n"
    )
    async with collector_run_pipeline(config, clock=clock) as p:
        runner = p.service.exporters["memory"]
        admin = AdminServer("127.0.0.1:0", p.service.telemetry, lambda: p.service)
        p.exporter().fail_with = [PermanentError("bad event", status=400)]
        await p.receiver().send([ev(1)])

        def stuck() -> bool:
            clock.advance(5.0)  # the sender retries the write by the Clock; stuck after 30 s of it
            h = runner.health()
            return not h["ready"] and "dead-letter writes" in h.get("stuck_reason", "")

        await eventually(stuck)
        assert "min_free_bytes" in runner.health()["stuck_reason"]
        assert p.service.health()["status"] == "degraded"
        ready = await admin.ready(None)  # type: ignore[arg-type]
        assert ready.status == 503
        [reason] = orjson.loads(ready.body)["reasons"]  # type: ignore[arg-type]
        assert reason.startswith("exporter memory: sender stuck: dead-letter writes failing"), reason

        runner.deadletters.min_free_bytes = 0  # space returns: the sender finishes by itself

        def recovered() -> bool:
            clock.advance(5.0)
            h = runner.health()
            return runner.deadletters.count() == 1 and h["ready"] and h["queue"]["events"] == 0

        await eventually(recovered)
        assert "stuck_reason" not in runner.health()


def test_reserve_check_is_the_one_the_queue_uses(tmp_path: Path) -> None:
    """One free-space check for every store (collector.sqlite.below_reserve)."""
    from collector import sqlite as db

    st = os.statvfs(tmp_path)
    free = st.f_bavail * st.f_frsize
    assert not db.below_reserve(tmp_path, 0, 10)
    assert db.below_reserve(tmp_path, free + (1 << 30), 10)
    assert not db.below_reserve(tmp_path, 1024, 10)
