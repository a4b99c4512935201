"""collector.sqlite: the pragmas, corruption and disk-full handling every store shares."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from collector import sqlite as db


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Path]:
    """A healthy database whose write lock another connection holds."""
    path = tmp_path / "locked.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("CREATE TABLE t (x)")
    holder.execute("INSERT INTO t VALUES (1)")
    holder.execute("BEGIN IMMEDIATE")
    yield path
    holder.execute("ROLLBACK")
    holder.close()


def error_of(path: Path, sql: str, *, timeout: float = 0.05) -> sqlite3.Error:
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        conn.execute(sql)
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"{sql!r} did not fail")


@pytest.mark.parametrize(("durability", "expected"), [("full", 2), ("relaxed", 1)])
def test_connect_applies_the_pragmas(tmp_path: Path, durability: str, expected: int) -> None:
    pragmas = db.Pragmas(
        synchronous=db.synchronous_for(durability),
        busy_timeout_s=1.5,
        wal_autocheckpoint_pages=128,
        journal_size_limit_bytes=1 << 20,
    )
    seen: list[sqlite3.Connection] = []
    conn = db.connect(tmp_path / "x.sqlite", pragmas, on_connect=seen.append)
    try:
        assert seen == [conn]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == expected
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1500
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 128
        assert conn.execute("PRAGMA journal_size_limit").fetchone()[0] == 1 << 20
    finally:
        conn.close()
    with pytest.raises(ValueError, match="durability"):
        db.synchronous_for("fast")


def test_corruption_is_told_apart_from_a_lock(tmp_path: Path, locked: Path) -> None:
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not an SQLite database" * 200)
    not_a_database = error_of(garbage, "SELECT * FROM sqlite_master")
    assert db.is_corrupt(not_a_database)

    busy = error_of(locked, "INSERT INTO t VALUES (2)")
    assert "locked" in str(busy)
    assert not db.is_corrupt(busy)
    assert not db.is_corrupt(sqlite3.OperationalError("disk I/O error"))
    assert not db.is_corrupt(sqlite3.OperationalError("database or disk is full"))
    assert db.is_corrupt(sqlite3.DatabaseError("database disk image is malformed"))


def test_disk_full_is_recognised_from_sqlite_and_from_the_file_system(tmp_path: Path, locked: Path) -> None:
    conn = sqlite3.connect(tmp_path / "small.sqlite", isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    conn.execute(f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(sqlite3.OperationalError) as full:
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    conn.close()
    assert db.is_disk_full(full.value)  # a real SQLITE_FULL
    assert db.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert not db.is_disk_full(OSError(errno.EIO, "I/O error"))
    assert not db.is_disk_full(error_of(locked, "INSERT INTO t VALUES (2)"))


def test_move_aside_keeps_every_file_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    for round_ in range(2):  # twice within one second: the second gets a serial
        for extra in ("", "-wal", "-shm"):
            Path(f"{path}{extra}").write_bytes(f"{round_}{extra}".encode())
        moved = db.move_aside(path)
        assert not path.exists() and moved.read_bytes() == f"{round_}".encode()
        assert Path(f"{path}-wal{moved.name.removeprefix(path.name)}").read_bytes() == f"{round_}-wal".encode()
    assert len(list(tmp_path.iterdir())) == 6


def test_open_or_move_aside_moves_only_a_damaged_file(tmp_path: Path, locked: Path) -> None:
    def open_table(path: Path) -> sqlite3.Connection:
        conn = db.connect(path, db.Pragmas(busy_timeout_s=0.05))
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
            conn.execute("INSERT INTO t VALUES (1)")
        except BaseException:
            conn.close()
            raise
        return conn

    damaged = tmp_path / "damaged.sqlite"
    damaged.write_bytes(b"this is not an SQLite database" * 200)
    conn, moved = db.open_or_move_aside(damaged, lambda: open_table(damaged), what="test store")
    conn.close()
    assert moved is not None and moved.read_bytes().startswith(b"this is not")
    assert damaged.exists()  # a fresh one

    before = locked.read_bytes()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        db.open_or_move_aside(locked, lambda: open_table(locked), what="test store")
    assert locked.read_bytes() == before
    assert [p.name for p in locked.parent.glob("locked.sqlite*.corrupt-*")] == []


def test_transaction_commits_or_rolls_back_and_keeps_the_real_error(tmp_path: Path) -> None:
    conn = db.connect(tmp_path / "t.sqlite", db.Pragmas())
    conn.execute("CREATE TABLE t (x)")
    with db.transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(KeyError), db.transaction(conn):
        conn.execute("INSERT INTO t VALUES (2)")
        raise KeyError("boom")
    conn.execute(f"PRAGMA max_page_count={conn.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(sqlite3.OperationalError) as full, db.transaction(conn):
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    assert db.is_disk_full(full.value)  # not masked by a failing ROLLBACK
    assert not conn.in_transaction
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    conn.close()


def test_every_store_moves_a_damaged_file_aside_and_starts_afresh(tmp_path: Path) -> None:
    from collector.runtime.deadletters import DeadLetterStore
    from collector.runtime.queue.sqlite import DurableQueue
    from collector.state import StateStore

    damaged = b"this is not an SQLite database" * 200
    for name in ("state.sqlite", "deadletter.sqlite", "queue.db"):
        (tmp_path / name).write_bytes(damaged)

    state = StateStore(tmp_path / "state.sqlite")
    state.put("ns", "k", 1)
    state.close()
    letters = DeadLetterStore(tmp_path / "deadletter.sqlite")
    assert letters.add([{"id": "e"}], "rejected") == 1 and letters.count() == 1
    letters.close()
    queue = DurableQueue(tmp_path)
    queue.open()
    assert queue.databases_moved_aside == 1 and queue.stats().items == 0
    queue.close()

    for name in ("state.sqlite", "deadletter.sqlite", "queue.db"):
        [aside] = tmp_path.glob(f"{name}.corrupt-*")
        assert aside.read_bytes() == damaged, name
