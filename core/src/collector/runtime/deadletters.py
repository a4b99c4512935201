"""The dead-letter store: events an exporter will never deliver by retrying.

One SQLite file per exporter, beside its queue.  An entry keeps the event,
the reason (``rejected`` with the far side's status and problem body, or
``max_age``) and when it happened.  ``collector dlq list|replay|drop`` works on
it, with or without a running collector (SQLite handles the concurrency; each
side waits up to ``busy_timeout`` for the other).  See docs/dead-letters.md.

Opening is :mod:`collector.sqlite`, shared with the queue and the state
store: a file SQLite reports as damaged is moved aside and a fresh one
started (the damaged one is kept, never deleted); a locked one is never
moved.  A write that fails because the disk is full raises
:class:`DeadLetterDiskFullError` (a :class:`~collector.errors.BackpressureError`):
the caller keeps the events and retries (docs/delivery.md, "Disk full").
"""

from __future__ import annotations

import builtins
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from collector.errors import BackpressureError
from collector.sqlite import Pragmas, connect, is_disk_full, open_or_move_aside, transaction

log = logging.getLogger("collector.runtime.deadletters")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    reason TEXT NOT NULL,
    status INTEGER,
    body TEXT,
    event BLOB NOT NULL
)
"""


class DeadLetterDiskFullError(BackpressureError):
    """The disk is full: nothing was stored; try again when there is room."""


@dataclass(frozen=True)
class DeadLetter:
    id: int
    created: float
    reason: str
    status: int | None
    body: str | None
    event: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created": self.created,
            "reason": self.reason,
            "status": self.status,
            "body": self.body,
            "event": self.event,
        }


class DeadLetterStore:
    """Thread-safe; every write is one transaction with ``synchronous=FULL``."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._pragmas = Pragmas(synchronous="FULL", busy_timeout_s=busy_timeout)
        self._db, _ = open_or_move_aside(path, self._open, what="dead-letter store", logger=log)

    def _open(self) -> sqlite3.Connection:
        conn = connect(self.path, self._pragmas)
        try:
            conn.execute(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    def add(
        self,
        events: Iterable[dict[str, Any]],
        reason: str,
        *,
        status: int | None = None,
        body: str | None = None,
    ) -> int:
        now = time.time()
        rows = [(now, reason, status, body, orjson.dumps(e)) for e in events]
        with self._write() as db:
            db.executemany("INSERT INTO dead_letters (created, reason, status, body, event) VALUES (?,?,?,?,?)", rows)
        return len(rows)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; a full disk becomes DeadLetterDiskFullError."""
        with self._lock:
            try:
                with transaction(self._db) as db:
                    yield db
            except sqlite3.Error as exc:
                if is_disk_full(exc):
                    raise DeadLetterDiskFullError(f"dead-letter store {self.path}: {exc}", retry_after=1.0) from exc
                raise

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])

    def list(self, limit: int = 100, offset: int = 0, ids: Iterable[int] | None = None) -> builtins.list[DeadLetter]:
        with self._lock:
            if ids is not None:
                wanted = list(ids)
                marks = ",".join("?" * len(wanted)) or "NULL"
                rows = self._db.execute(
                    f"SELECT id, created, reason, status, body, event FROM dead_letters WHERE id IN ({marks}) "
                    "ORDER BY id",
                    wanted,
                ).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT id, created, reason, status, body, event FROM dead_letters ORDER BY id LIMIT ? OFFSET ?",
                    (limit, offset),
                ).fetchall()
        return [DeadLetter(r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5])) for r in rows]

    def max_id(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(MAX(id), 0) FROM dead_letters").fetchone()[0])

    def iter_all(self, chunk: int = 500, ids: Iterable[int] | None = None) -> Iterator[builtins.list[DeadLetter]]:
        """Entries in id order, in chunks.  Only those present when iteration
        starts: a replay that dead-letters an event again must not see it twice."""
        if ids is not None:
            wanted = list(ids)
            for i in range(0, len(wanted), chunk):
                yield self.list(ids=wanted[i : i + chunk])
            return
        last, upto = 0, self.max_id()
        while True:
            with self._lock:
                rows = self._db.execute(
                    "SELECT id, created, reason, status, body, event FROM dead_letters WHERE id > ? AND id <= ? "
                    "ORDER BY id LIMIT ?",
                    (last, upto, chunk),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield [DeadLetter(r[0], r[1], r[2], r[3], r[4], orjson.loads(r[5])) for r in rows]

    def delete(self, ids: Iterable[int]) -> int:
        wanted = [(i,) for i in ids]
        with self._write() as db:
            return db.executemany("DELETE FROM dead_letters WHERE id = ?", wanted).rowcount

    def clear(self) -> int:
        with self._write() as db:
            return db.execute("DELETE FROM dead_letters").rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
