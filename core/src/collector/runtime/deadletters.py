"""The dead-letter store: events an exporter will never deliver by retrying.

One SQLite file per exporter, beside its queue.  An entry keeps the event,
the reason (``rejected`` with the far side's status and problem body, or
``max_age``) and when it happened.  ``collector dlq list|replay|drop`` works on
it, with or without a running collector (SQLite handles the concurrency).
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

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

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)

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
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO dead_letters (created, reason, status, body, event) VALUES (?,?,?,?,?)", rows
                )
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite may already have rolled back (e.g. on a full disk).
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return len(rows)

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
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.executemany("DELETE FROM dead_letters WHERE id = ?", wanted)
            self._db.execute("COMMIT")
            return cur.rowcount

    def clear(self) -> int:
        with self._lock:
            cur = self._db.execute("DELETE FROM dead_letters")
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._db.close()
