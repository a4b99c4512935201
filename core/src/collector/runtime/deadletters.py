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
So does a write that would leave less than ``min_free_bytes`` free (the
exporter's ``queue.min_free_bytes``, checked with the queue's own
:func:`collector.sqlite.below_reserve`): dead letters must not eat the
reserve that lets the queue drain.  The WAL is checkpointed often and
truncated back to 1 MiB, as the queue's is.
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
from collector.sqlite import (
    Pragmas,
    below_reserve,
    connect,
    free_pages_bytes,
    is_disk_full,
    open_or_move_aside,
    transaction,
)
from collector.telemetry import REDACTOR

log = logging.getLogger("collector.runtime.deadletters")

# As the queue's (collector.runtime.queue.sqlite): a short WAL, so that the
# store never holds more than about this much beyond its data.
_WAL_AUTOCHECKPOINT_PAGES = 128
_JOURNAL_SIZE_LIMIT = 1024 * 1024
# Per entry, beyond the event and the body: the row, the index, page slack.
_ROW_OVERHEAD = 64

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

    def __init__(self, path: Path, *, busy_timeout: float = 30.0, min_free_bytes: int = 0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        #: refuse writes that would leave less than this free on the disk (0: only a real disk-full error)
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self._pragmas = Pragmas(
            synchronous="FULL",
            busy_timeout_s=busy_timeout,
            wal_autocheckpoint_pages=_WAL_AUTOCHECKPOINT_PAGES,
            journal_size_limit_bytes=_JOURNAL_SIZE_LIMIT,
        )
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
        # The reason and the far side's answer are shown by `collector dlq list`: a
        # destination that echoes our Authorization header must not store the token.
        reason = REDACTOR.scrub(reason)
        body = REDACTOR.scrub(body) if body is not None else None
        rows = [(now, reason, status, body, orjson.dumps(e)) for e in events]
        size = sum(len(r[4]) + len(reason) + len(body or "") + _ROW_OVERHEAD for r in rows)
        with self._write(size) as db:
            db.executemany("INSERT INTO dead_letters (created, reason, status, body, event) VALUES (?,?,?,?,?)", rows)
        return len(rows)

    def _checkpoint(self) -> None:
        """Fold the WAL into the file now (under the lock), so that the next reserve check sees what it cost."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as exc:
            log.debug("dead-letter store %s: checkpoint failed: %s", self.path, exc)

    @contextmanager
    def _write(self, size: int = 0) -> Iterator[sqlite3.Connection]:
        """One write transaction under the lock; a full disk becomes DeadLetterDiskFullError.

        A write that adds ``size`` bytes is refused the same way when it
        would eat into ``min_free_bytes``; deletes (``size`` 0) never are.
        It is charged twice its size (once in the WAL, once in the file) and,
        while a reserve is kept, checkpointed at once, so that no WAL frames
        wait to grow the file behind the next check's back.
        """
        with self._lock:
            if size and below_reserve(
                self.path.parent, self.min_free_bytes, 2 * size, inside=lambda: free_pages_bytes(self._db)
            ):
                raise DeadLetterDiskFullError(
                    f"dead-letter store {self.path}: less than min_free_bytes={self.min_free_bytes} would be free",
                    retry_after=1.0,
                )
            try:
                with transaction(self._db) as db:
                    yield db
                if size and self.min_free_bytes:
                    self._checkpoint()
            except sqlite3.Error as exc:
                if is_disk_full(exc):
                    self._truncate_wal()
                    raise DeadLetterDiskFullError(f"dead-letter store {self.path}: {exc}", retry_after=1.0) from exc
                raise

    def _truncate_wal(self) -> None:
        """After a full disk: give the WAL's space back (best effort)."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            log.debug("dead-letter store %s: checkpoint after a full disk failed: %s", self.path, exc)

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
            self._truncate_wal()
            self._db.close()


class LazyDeadLetters:
    """A component's dead-letter sink (``ctx.dead_letters``): the store at ``path``, opened only when something
    is set aside and closed again after, since a receiver's dead letters are rare (a malformed line) and a
    collector that never has any should not carry an open database for each receiver."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def add(self, events: Iterable[dict[str, Any]], reason: str) -> int:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            store = DeadLetterStore(self.path)
            try:
                return store.add(events, reason)
            finally:
                store.close()
