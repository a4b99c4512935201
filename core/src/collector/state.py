"""The state store: small persistent key/value state under a component's storage directory.

Used for dedupe keys, aggregation windows and (later) pull-receiver
watermarks.  One SQLite file (WAL, ``synchronous=FULL`` unless ``relaxed``)
per component, at a path the component chooses inside its private
``storage_dir``.

Model::

    (namespace, key) -> value   value: bytes (kept as is) or anything JSON
                                (orjson); ``get`` returns what ``put`` stored
                         expires  optional, seconds since the epoch

* Writes batch: :meth:`StateStore.put_many` / :meth:`StateStore.delete_many`
  are ONE transaction each; :meth:`StateStore.transaction` groups reads and
  writes into one atomic read-modify-write (``BEGIN IMMEDIATE``).
* Expiry is passive: an entry whose ``expires`` is at or before the ``now``
  a reader passes is reported absent, and :meth:`StateStore.purge_expired`
  deletes at most ``limit`` expired entries per call (bounded work).  The
  store never reads a clock itself, so a fake clock drives it in tests.
* Bounded: ``max_keys`` caps the entries of the whole file.  A write that
  would exceed it first deletes expired entries (``now`` given), then, with
  ``on_full="evict"``, evicts the entries that expire soonest (entries
  without an expiry are never evicted) and reports how many; with
  ``on_full="refuse"`` (the default) or when nothing evictable is left, a
  write that adds entries is rolled back as a whole and
  :class:`StateFullError` (a :class:`~collector.errors.BackpressureError`)
  is raised.  Writes that only replace entries, and deletes, always go
  through, even over the bound (after ``max_keys`` was lowered).
* Nothing is held only in memory: the entry count lives in the file
  (maintained by triggers in the same transaction), every read goes to the
  file, and SQLite's locking lets several processes share one store.  The
  API is blocking and thread-safe; call it from asyncio with
  ``asyncio.to_thread``.
* Opening is :mod:`collector.sqlite`, shared with the queue and the dead
  letters (docs/delivery.md): a file SQLite reports as damaged is moved aside
  (``<name>.corrupt-<stamp>``) and a fresh one is started, so a damaged file
  never stops the collector; a locked one is waited for (``busy_timeout``)
  and then reported, never moved.  A full disk (SQLITE_FULL, ENOSPC) is
  :class:`StateFullError`: refused for now, retried when space returns.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from collector.errors import BackpressureError
from collector.sqlite import (
    ConnectHook,
    Durability,
    Pragmas,
    connect,
    is_disk_full,
    open_or_move_aside,
    synchronous_for,
    transaction,
)

if TYPE_CHECKING:
    from prometheus_client import Counter

    from collector.metrics import Meter

log = logging.getLogger("collector.state")

OnFull = Literal["refuse", "evict"]

SCHEMA_VERSION = 1
_CHUNK = 500  # bound parameters per statement (SQLite's limit is 32766 here, but keep statements small)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL,
    key TEXT NOT NULL,
    value BLOB NOT NULL,
    json INTEGER NOT NULL,
    expires REAL,
    PRIMARY KEY (ns, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
CREATE TABLE IF NOT EXISTS kv_count (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
INSERT OR IGNORE INTO kv_count (id, n) VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS kv_count_ins AFTER INSERT ON kv BEGIN UPDATE kv_count SET n = n + 1 WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS kv_count_del AFTER DELETE ON kv BEGIN UPDATE kv_count SET n = n - 1 WHERE id = 0; END;
"""

_UPSERT = (
    "INSERT INTO kv (ns, key, value, json, expires) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, json = excluded.json, expires = excluded.expires"
)


class StateFullError(BackpressureError):
    """The store holds ``max_keys`` entries and none may be evicted: the write was rolled back."""


@dataclass(frozen=True)
class Entry:
    key: str
    value: Any
    expires: float | None


PutItem = tuple[str, Any] | tuple[str, Any, float | None]


def _encode(value: Any) -> tuple[bytes, int]:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), 0
    return orjson.dumps(value), 1


def _decode(blob: bytes, is_json: int) -> Any:
    return orjson.loads(blob) if is_json else bytes(blob)


def _live(expires: float | None, now: float | None) -> bool:
    return now is None or expires is None or expires > now


def _chunks(items: list[Any], size: int = _CHUNK) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Transaction:
    """Reads and writes inside one ``BEGIN IMMEDIATE`` transaction (see :meth:`StateStore.transaction`)."""

    def __init__(self, store: StateStore, db: sqlite3.Connection) -> None:
        self._store = store
        self._db = db
        self.evicted = 0

    # -- reads -------------------------------------------------------------------

    def get_entry(self, namespace: str, key: str, *, now: float | None = None) -> Entry | None:
        row = self._db.execute(
            "SELECT value, json, expires FROM kv WHERE ns = ? AND key = ?", (namespace, key)
        ).fetchone()
        if row is None or not _live(row[2], now):
            return None
        return Entry(key, _decode(row[0], row[1]), row[2])

    def get(self, namespace: str, key: str, default: Any = None, *, now: float | None = None) -> Any:
        entry = self.get_entry(namespace, key, now=now)
        return default if entry is None else entry.value

    def get_many(self, namespace: str, keys: Iterable[str], *, now: float | None = None) -> dict[str, Any]:
        """The live entries among ``keys`` (missing and expired ones are left out)."""
        out: dict[str, Any] = {}
        for chunk in _chunks(list(dict.fromkeys(keys))):
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                f"SELECT key, value, json, expires FROM kv WHERE ns = ? AND key IN ({marks})", (namespace, *chunk)
            )
            for key, blob, is_json, expires in rows:
                if _live(expires, now):
                    out[key] = _decode(blob, is_json)
        return out

    def items(
        self,
        namespace: str,
        *,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
        now: float | None = None,
    ) -> list[Entry]:
        """Entries with ``start <= key < end``, in key order, at most ``limit`` (expired ones left out)."""
        sql = "SELECT key, value, json, expires FROM kv WHERE ns = ?"
        args: list[Any] = [namespace]
        if start is not None:
            sql += " AND key >= ?"
            args.append(start)
        if end is not None:
            sql += " AND key < ?"
            args.append(end)
        if now is not None:
            sql += " AND (expires IS NULL OR expires > ?)"
            args.append(now)
        sql += " ORDER BY key"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [Entry(k, _decode(b, j), e) for k, b, j, e in self._db.execute(sql, args)]

    def count(self, namespace: str | None = None) -> int:
        if namespace is None:
            return int(self._db.execute("SELECT n FROM kv_count WHERE id = 0").fetchone()[0])
        return int(self._db.execute("SELECT count(*) FROM kv WHERE ns = ?", (namespace,)).fetchone()[0])

    # -- writes ------------------------------------------------------------------

    def put(
        self, namespace: str, key: str, value: Any, *, expires: float | None = None, now: float | None = None
    ) -> int:
        return self.put_many(namespace, [(key, value, expires)], now=now)

    def put_many(self, namespace: str, items: Iterable[PutItem], *, now: float | None = None) -> int:
        """Insert or replace ``(key, value)`` or ``(key, value, expires)`` items.

        Returns how many entries were evicted to stay within ``max_keys``
        (``now`` lets expired entries make room first, uncounted).
        """
        rows = []
        for item in items:
            key, value = item[0], item[1]
            expires = item[2] if len(item) > 2 else None  # type: ignore[misc]
            blob, is_json = _encode(value)
            rows.append((namespace, key, blob, is_json, expires))
        if not rows:
            return 0
        before = self.count() if self._store.max_keys is not None else 0
        self._db.executemany(_UPSERT, rows)
        return self._enforce_bound(before, now)

    def delete(self, namespace: str, key: str) -> bool:
        return self.delete_many(namespace, [key]) == 1

    def delete_many(self, namespace: str, keys: Iterable[str]) -> int:
        """Delete ``keys``; returns how many existed."""
        deleted = 0
        for chunk in _chunks(list(dict.fromkeys(keys))):
            marks = ",".join("?" * len(chunk))
            deleted += self._db.execute(
                f"DELETE FROM kv WHERE ns = ? AND key IN ({marks})", (namespace, *chunk)
            ).rowcount
        return deleted

    def delete_namespace(self, namespace: str) -> int:
        return self._db.execute("DELETE FROM kv WHERE ns = ?", (namespace,)).rowcount

    def purge_expired(self, now: float, *, limit: int = 10_000) -> int:
        """Delete at most ``limit`` entries expired at ``now`` (soonest first); returns how many."""
        return self._db.execute(
            "DELETE FROM kv WHERE (ns, key) IN "
            "(SELECT ns, key FROM kv WHERE expires IS NOT NULL AND expires <= ? ORDER BY expires LIMIT ?)",
            (now, limit),
        ).rowcount

    def _enforce_bound(self, before: int, now: float | None) -> int:
        max_keys = self._store.max_keys
        if max_keys is None:
            return 0
        after = self.count()
        excess = after - max_keys
        if excess <= 0:
            return 0
        if now is not None:
            excess -= self.purge_expired(now, limit=excess)
        evicted = 0
        if excess > 0 and self._store.on_full == "evict":
            evicted = self._db.execute(
                "DELETE FROM kv WHERE (ns, key) IN "
                "(SELECT ns, key FROM kv WHERE expires IS NOT NULL ORDER BY expires LIMIT ?)",
                (excess,),
            ).rowcount
            excess -= evicted
        # Only growth is refused: over the bound already (max_keys was lowered), a write that
        # replaces entries still goes through, so that what is stored can be updated and drained.
        if excess > 0 and self.count() > before:
            raise StateFullError(
                f"state store {self._store.path} is full ({max_keys} keys) and nothing more may be evicted",
                retry_after=1.0,
            )
        self.evicted += evicted
        return evicted


class StateStore:
    """A namespaced key/value store in one SQLite file; blocking, thread-safe."""

    def __init__(
        self,
        path: Path,
        *,
        max_keys: int | None = None,
        on_full: OnFull = "refuse",
        durability: Durability = "full",
        busy_timeout: float = 30.0,
        on_connect: ConnectHook | None = None,
    ) -> None:
        """``on_connect`` is called with the store's SQLite connection once it is set up
        (instrumentation; tests use it for a full disk)."""
        if max_keys is not None and max_keys <= 0:
            raise ValueError("max_keys must be positive")
        self.path = Path(path)
        self.max_keys = max_keys
        self.on_full: OnFull = on_full
        self.durability: Durability = durability
        self.evicted = 0  # entries evicted by this process since it opened the store (for logs and metrics)
        self._pragmas = Pragmas(synchronous=synchronous_for(durability), busy_timeout_s=busy_timeout)
        self._on_connect = on_connect
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db, _ = open_or_move_aside(self.path, self._open, what="state store", logger=log)

    def _open(self) -> sqlite3.Connection:
        conn = connect(self.path, self._pragmas, on_connect=self._on_connect)
        try:
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("SELECT n FROM kv_count").fetchone()
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """One atomic read-modify-write: commits when the block ends, rolls back on an exception."""
        with self._lock:
            try:
                with transaction(self._db) as conn:
                    tx = Transaction(self, conn)
                    yield tx
            except sqlite3.Error as exc:
                if is_disk_full(exc):
                    # Disk full behaves like a full queue: refuse for now, recover when space returns.
                    raise StateFullError(f"state store {self.path}: {exc}", retry_after=5.0) from exc
                raise
            self.evicted += tx.evicted

    @contextmanager
    def _read(self) -> Iterator[Transaction]:
        # A single SELECT is atomic by itself; no write lock is needed.
        with self._lock:
            yield Transaction(self, self._db)

    # -- reads -------------------------------------------------------------------

    def get_entry(self, namespace: str, key: str, *, now: float | None = None) -> Entry | None:
        with self._read() as tx:
            return tx.get_entry(namespace, key, now=now)

    def get(self, namespace: str, key: str, default: Any = None, *, now: float | None = None) -> Any:
        """The value stored under ``key`` (``default`` when missing or expired at ``now``)."""
        with self._read() as tx:
            return tx.get(namespace, key, default, now=now)

    def get_many(self, namespace: str, keys: Iterable[str], *, now: float | None = None) -> dict[str, Any]:
        with self._read() as tx:
            return tx.get_many(namespace, keys, now=now)

    def items(
        self,
        namespace: str,
        *,
        start: str | None = None,
        end: str | None = None,
        limit: int | None = None,
        now: float | None = None,
    ) -> list[Entry]:
        """One page of a namespace in key order (``start <= key < end``)."""
        with self._read() as tx:
            return tx.items(namespace, start=start, end=end, limit=limit, now=now)

    def iterate(self, namespace: str, *, now: float | None = None, page: int = 1000) -> Iterator[Entry]:
        """Every entry of a namespace in key order, read ``page`` at a time.

        Each page is consistent by itself; writes between pages may or may
        not be seen (no lock is held while the caller works).
        """
        after: str | None = None
        while True:
            with self._read() as tx:
                sql = "SELECT key, value, json, expires FROM kv WHERE ns = ?"
                args: list[Any] = [namespace]
                if after is not None:
                    sql += " AND key > ?"
                    args.append(after)
                rows = tx._db.execute(sql + " ORDER BY key LIMIT ?", (*args, page)).fetchall()
            for key, blob, is_json, expires in rows:
                if _live(expires, now):
                    yield Entry(key, _decode(blob, is_json), expires)
            if len(rows) < page:
                return
            after = rows[-1][0]

    def count(self, namespace: str | None = None) -> int:
        """Entries in ``namespace`` (or in the whole store), expired ones not yet purged included."""
        with self._read() as tx:
            return tx.count(namespace)

    # -- writes (one transaction each) -------------------------------------------

    def put(
        self, namespace: str, key: str, value: Any, *, expires: float | None = None, now: float | None = None
    ) -> int:
        with self.transaction() as tx:
            return tx.put(namespace, key, value, expires=expires, now=now)

    def put_many(self, namespace: str, items: Iterable[PutItem], *, now: float | None = None) -> int:
        """Write every item in ONE transaction; returns how many entries were evicted."""
        with self.transaction() as tx:
            return tx.put_many(namespace, items, now=now)

    def delete(self, namespace: str, key: str) -> bool:
        with self.transaction() as tx:
            return tx.delete(namespace, key)

    def delete_many(self, namespace: str, keys: Iterable[str]) -> int:
        """Delete every key in ONE transaction; returns how many existed."""
        with self.transaction() as tx:
            return tx.delete_many(namespace, keys)

    def purge_expired(self, now: float, *, limit: int = 10_000) -> int:
        """Delete at most ``limit`` expired entries (bounded work per call); returns how many."""
        with self.transaction() as tx:
            return tx.purge_expired(now, limit=limit)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def synchronous(self) -> int:
        """The connection's ``PRAGMA synchronous`` (2 = FULL, 1 = NORMAL)."""
        with self._lock:
            return int(self._db.execute("PRAGMA synchronous").fetchone()[0])


def evictions_counter(meter: Meter) -> Counter:
    """``collector_state_evicted_keys_total{component}``, created on first use (so only
    services with a bounded store export it)."""
    return meter.counter(
        "state_evicted_keys",
        "Entries a full state store evicted (soonest to expire first) to make room.",
        ["component"],
    )
