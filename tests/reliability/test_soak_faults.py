"""Fault injection for ``make soak``: a full disk, and a damaged queue database, again and again.

``make soak`` runs every ``soak`` test of tests/reliability: the oracle's
worker crash loop (test_oracle_crash.py: a collector subprocess killed with
SIGKILL during ingest and restarted, ``COLLECTOR_SOAK_TRIALS`` times) and the
two loops here, sized from the same variable:

* **Disk full** (:func:`disk_full_cycles`): the storage directory is a small
  tmpfs (skipped with the reason where mounting is not allowed).  Each cycle
  ingests, fills the disk with a ballast file until intake answers 503,
  checks that ``/ready`` says so, sometimes kills the collector with SIGKILL
  while the disk is full and restarts it, then frees the space and waits for
  intake to come back by itself.
* **Corruption** (:func:`corruption_cycles`): each cycle queues events while
  the destination is unreachable, stops the collector, overwrites pages in the
  middle of its queue database, restarts it and checks that it starts, stays
  ready, and delivers every acknowledged event whose row can still be read
  (the oracle reads each row of a copy of the damaged file by its id; rows on
  a damaged page are the only ones allowed to be missing).

Each ends with every acknowledged event delivered.  ``make test`` runs one
cycle of each (a few seconds); ``make soak`` runs ``COLLECTOR_SOAK_TRIALS // 20``
(at least 3).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from reliability.test_disk_full import (  # the disk-full suite's helpers: tmpfs, a client that keeps its acks
    Sender,
    _assert_503_with_retry_after,
    _config,
    _fill_disk,
    _wait_recovered,
    tmpfs,
)

from support.collector_proc import CollectorProcess
from support.fake_openmeter import FakeOpenMeter

PAGE = 4096
QUEUE_TABLE_PREFIX = "ack_queue"


def soak_cycles() -> int:
    return max(3, int(os.environ.get("COLLECTOR_SOAK_TRIALS", "200")) // 20)


def _seed() -> int:
    env = os.environ.get("COLLECTOR_ORACLE_SEED")
    seed = int(env) if env else random.SystemRandom().randrange(2**32)
    print(f"\nfault soak seed: {seed} (replay with COLLECTOR_ORACLE_SEED={seed})")
    return seed


def _assert_stays_ready(proc: CollectorProcess, seconds: float) -> None:
    """``/ready`` answers 200 now and at every poll for ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        status, body = proc.get("/ready")
        assert status == 200, f"not ready after a restart: {status} {body!r}\n{proc.log_tail()}"
        if time.monotonic() >= deadline:
            return
        time.sleep(0.1)


def _wait_ready(proc: CollectorProcess, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.get("/ready")[0] != 200:
        assert time.monotonic() < deadline, f"never ready: {proc.get('/ready')}\n{proc.log_tail()}"
        time.sleep(0.05)


# -- disk full ---------------------------------------------------------------------------------


def disk_full_cycles(workdir: Path, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    with tmpfs(workdir / "mnt", "8m") as mnt, FakeOpenMeter.in_thread() as fake:
        cfg = _config(mnt / "storage", fake, queue={"max_bytes": 64 * 1024 * 1024, "min_free_bytes": 0})
        with CollectorProcess(workdir / "work", cfg) as proc:
            proc.start()
            proc.wait_started()
            sender = Sender(proc.ingest_url, "soakdisk")
            ballast = mnt / "ballast.bin"
            crashes = 0
            for cycle in range(cycles):
                for _ in range(rng.randint(3, 10)):
                    assert sender.post()[0] == 204, sender.refusals[-1:]
                fake.wait_for_ids_sync(sender.acked, timeout=20)
                proc.wait_drained(timeout=20)
                fake.pause_listening_sync(None)  # nothing is delivered (nor acked) while the disk is full
                refused_before = len(sender.refusals)
                _fill_disk(ballast, 16 * 1024 * 1024)
                for _ in range(200):  # the WAL may still have room: use it up
                    if sender.post()[0] != 204:
                        break
                new_refusals = sender.refusals[refused_before:]
                _assert_503_with_retry_after(new_refusals)
                assert proc.get("/ready")[0] == 503, f"cycle {cycle}: ready while the disk is full"
                if cycle % 2 == 1 or rng.random() < 0.3:
                    proc.kill()  # a crash while the disk is full; the restart must not lose what was acked
                    crashes += 1
                    ballast.unlink()
                    proc.start()
                    proc.wait_started()
                else:
                    ballast.unlink()  # space returns: intake must come back by itself
                fake.resume_listening_sync()
                assert _wait_recovered(proc, sender, timeout=15), f"cycle {cycle}: intake did not come back"
            fake.wait_for_ids_sync(sender.acked, timeout=30)
            proc.wait_drained(timeout=30)
            assert proc.stop() == 0, proc.log_tail()
    print(f"\ndisk-full soak: {cycles} cycles, {crashes} crashes while full, acked {len(sender.acked)}")


@pytest.mark.slow
def test_disk_full_once_with_a_crash_while_full(tmp_path: Path) -> None:
    disk_full_cycles(tmp_path, 2, _seed())


@pytest.mark.slow
@pytest.mark.soak
def test_disk_full_soak(tmp_path: Path) -> None:
    disk_full_cycles(tmp_path, soak_cycles(), _seed())


# -- corruption --------------------------------------------------------------------------------


def _copy_db(db: Path, into: Path) -> Path:
    copy = into / db.name
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{db}{suffix}")
        if src.exists():
            shutil.copyfile(src, Path(f"{copy}{suffix}"))
    return copy


def _pending_rows(db: Path) -> dict[int, list[tuple[str, str]]]:
    """Queue item id -> the (source, id) of its events, for every unacknowledged item of an intact database."""
    with tempfile.TemporaryDirectory(prefix="queue-copy-") as tmp:
        conn = sqlite3.connect(str(_copy_db(db, Path(tmp))))
        try:
            out: dict[int, list[tuple[str, str]]] = {}
            for table in _tables(conn):
                for item_id, data in conn.execute(f"SELECT _id, data FROM {table} WHERE status < 5"):
                    out[int(item_id)] = _events(data)
            return out
        finally:
            conn.close()


def _readable(db: Path, item_ids: Iterable[int]) -> set[int]:
    """The items that can still be read, one lookup by id each, from a copy of the damaged ``db``."""
    readable: set[int] = set()
    with tempfile.TemporaryDirectory(prefix="queue-copy-") as tmp:
        conn = sqlite3.connect(str(_copy_db(db, Path(tmp))))
        try:
            try:
                tables = _tables(conn)
            except sqlite3.DatabaseError:
                return readable  # the schema itself is damaged: nothing can be read
            for item_id in item_ids:
                for table in tables:
                    try:
                        row = conn.execute(f"SELECT data FROM {table} WHERE _id = ?", (item_id,)).fetchone()
                        if row is not None:
                            _events(row[0])
                    except (sqlite3.DatabaseError, ValueError):
                        continue
                    if row is not None:
                        readable.add(item_id)
        finally:
            conn.close()
    return readable


def _tables(conn: sqlite3.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            f"SELECT name FROM sqlite_master WHERE type='table' AND name LIKE '{QUEUE_TABLE_PREFIX}%'"
        )
    ]


def _events(data: bytes) -> list[tuple[str, str]]:
    doc = json.loads(bytes(data))
    return [(e["source"], e["id"]) for e in doc.get("e", [])]


def _damage(db: Path, rng: random.Random, pages: int) -> list[int]:
    """Overwrite ``pages`` whole pages of the file's middle half (never the header or the schema)."""
    total = db.stat().st_size // PAGE
    assert total >= 8, f"the queue database is too small to damage ({total} pages)"
    chosen = sorted(rng.sample(range(total // 4, 3 * total // 4), k=min(pages, total // 2)))
    with open(db, "r+b") as handle:
        for page in chosen:
            handle.seek(page * PAGE)
            handle.write(rng.randbytes(PAGE))
    return chosen


def corruption_cycles(workdir: Path, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    lost: set[tuple[str, str]] = set()  # acknowledged events on a damaged page: allowed to be missing
    with FakeOpenMeter.in_thread() as fake:
        cfg = _config(workdir / "storage", fake, queue={"max_bytes": 64 * 1024 * 1024})
        with CollectorProcess(workdir / "work", cfg) as proc:
            sender = Sender(proc.ingest_url, "soakcorrupt")
            proc.start()
            proc.wait_started()
            for cycle in range(cycles):
                fake.pause_listening_sync(None)  # the events stay in the queue
                for _ in range(rng.randint(150, 300)):
                    assert sender.post(n=5, pad=60)[0] == 204, sender.refusals[-1:]
                if rng.random() < 0.5:
                    proc.kill()  # the queue's last commits still in its WAL
                else:
                    proc.stop()  # a drained stop folds the WAL into the file
                db = proc.queue_db
                pending = _pending_rows(db)
                assert pending, "nothing queued to damage"
                damaged_pages = _damage(db, rng, rng.randint(1, 3))
                readable = _readable(db, pending)
                unreadable = set(pending) - readable
                lost.update(k for item in unreadable for k in pending[item])
                print(
                    f"\ncorruption cycle {cycle}: pages {damaged_pages} damaged, "
                    f"{len(pending) - len(readable)} of {len(pending)} queue items unreadable"
                )
                fake.resume_listening_sync()
                proc.start()
                proc.wait_started()
                _wait_ready(proc)
                _assert_stays_ready(proc, 1.0)
                must_arrive = {k for item in readable for k in pending[item]} & sender.acked
                try:
                    fake.wait_for_ids_sync(must_arrive, timeout=30)
                except TimeoutError as exc:
                    pytest.fail(f"cycle {cycle}: readable acknowledged events never arrived: {exc}\n{proc.log_tail()}")
                assert proc.get("/ready")[0] == 200, proc.log_tail()
            proc.wait_drained(timeout=30)
            fake.wait_for_ids_sync(sender.acked - lost, timeout=30)
            assert proc.stop() == 0, proc.log_tail()
    print(f"\ncorruption soak: {cycles} cycles, acked {len(sender.acked)}, lost to damaged pages {len(lost)}")


@pytest.mark.slow
def test_a_damaged_queue_once(tmp_path: Path) -> None:
    corruption_cycles(tmp_path, 1, _seed())


@pytest.mark.slow
@pytest.mark.soak
def test_corruption_soak(tmp_path: Path) -> None:
    corruption_cycles(tmp_path, soak_cycles(), _seed())
