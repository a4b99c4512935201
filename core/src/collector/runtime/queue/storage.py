"""The durable queue's table: persist-queue's, and the one class that depends on how it is built.

persist-queue (``SQLiteAckQueue``) is the queue's storage, as the product
states (docs/delivery.md).  :class:`QueueTable` uses it the way persist-queue's
own variants (``FILOSQLiteAckQueue``, ``UniqueAckQ``) do: through its public
methods and its class-level extension points, never its instance internals
(its connections, locks or caches):

* ``put()`` writes one item in one transaction: one group commit of
  :class:`collector.runtime.queue.sqlite.DurableQueue` (many producers' batches,
  one fsync);
* ``clear_acked_data()`` deletes acked rows that an older collector left;
* the table is named by ``_TABLE_NAME``/``_KEY_COLUMN`` (the ``_table_name``
  and ``_key_column`` properties) with the columns of ``_SQL_CREATE``.

Two promises cannot be kept through that surface, so this class adds the
smallest thing that keeps each (core/tests/test_queue_sqlite.py checks the library
still has the shape relied on, and fails loudly if an upgrade changes it):

1. **Pragmas on persist-queue's connections.**  It turns on WAL but sets
   nothing else, and the pragmas are per connection; ``durability: relaxed``
   (``synchronous=NORMAL``) and the short WAL that lets a queue drain a disk
   it filled need them on the connection ``put()`` writes through.  The only
   override: ``_new_db_connection``, the factory ``SQLiteBase`` calls for each
   connection it opens, applies :func:`collector.sqlite.configure`.
2. **Claiming and acknowledging without an fsync each.**  ``get()`` marks the
   row in flight and ``ack()`` marks it acked, each an UPDATE in its own
   transaction with ``synchronous=FULL`` (an fsync), and acked rows stay
   until a later ``clear_acked_data()`` (a full scan: ``status`` has no
   index).  Measured on the development VM (2 cores, virtual disk; 20,000
   items of 2 kB, get + ack, synchronous=FULL), items/s:

       persist-queue get() + ack(id=), clear every 32 acks       2,134
       the same with an index on status                          2,601
       claim in memory, SELECT by id, DELETE by id               2,810

   So claims live in memory (after a crash every unacknowledged row is sent
   again anyway: at-least-once), :meth:`read` is a plain SELECT by id and
   :meth:`delete` removes the row in one transaction committed with
   ``synchronous=NORMAL``: in WAL mode it becomes durable with the next
   fsync'd commit, so a power loss can at worst forget an acknowledgement
   and send that item again (a duplicate, which the destination
   de-duplicates by id), never lose one.  Both go through a connection of
   our own (:attr:`side`), opened with :func:`collector.sqlite.connect` on
   the same file, so no persist-queue connection's settings are touched.
   tests/bench/bench_queue.py, get + ack of 1,000 one-put items of 100
   events: about 4,500 items/s (450k events/s), the same as when the
   DELETE went through persist-queue's own writer with its ``synchronous``
   switched to NORMAL and back around it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from persistqueue.sqlackqueue import AckStatus, SQLiteAckQueue

from collector import sqlite as db

#: Bytes of a payload read at open to rebuild the counters (the header).
HEADER_BYTES = 96


class RawBytes:
    """persist-queue serializer that stores our orjson bytes as they are.

    Decoding stays with the queue, so an unreadable payload surfaces as the
    queue's own error (and is quarantined) instead of failing inside
    persist-queue.
    """

    @staticmethod
    def dumps(value: bytes, sort_keys: bool = False) -> bytes:
        return value

    @staticmethod
    def loads(value: bytes) -> bytes:
        return value


class QueueTable(SQLiteAckQueue):
    """persist-queue's ack-queue table, plus a side connection that reads and deletes by id.

    Blocking and not thread-safe by itself: the queue serialises every call.
    """

    def __init__(
        self,
        directory: Path,
        *,
        name: str,
        db_file_name: str,
        pragmas: db.Pragmas,
        on_connect: db.ConnectHook | None = None,
    ) -> None:
        # Ours, set before super().__init__: it opens its connections at once.
        self._pragmas = pragmas
        self._on_connect = on_connect
        self.side: sqlite3.Connection | None = None
        try:
            super().__init__(
                str(directory),
                name=name,
                db_file_name=db_file_name,
                multithreading=True,  # connections usable from the queue's writer thread
                serializer=RawBytes,
                # Nothing is ever marked in flight (claims are in memory), so
                # there is nothing to resume: skip its UPDATE at open.
                auto_resume=False,
            )
            # Deletes and reads: never an fsync of their own (see the module docstring).
            side = db.Pragmas(
                synchronous="NORMAL",
                busy_timeout_s=pragmas.busy_timeout_s,
                wal_autocheckpoint_pages=pragmas.wal_autocheckpoint_pages,
                journal_size_limit_bytes=pragmas.journal_size_limit_bytes,
            )
            self.side = db.connect(Path(directory) / db_file_name, side, on_connect=on_connect)
            # Collectors before acks deleted rows indexed status for clear_acked_data();
            # nothing reads it now, and it would cost every insert and delete.
            self.side.execute(f"DROP INDEX IF EXISTS `{self._TABLE_NAME}_{name}_status`")
        except BaseException:
            self.close()
            raise

    # -- the one override -------------------------------------------------------------------

    def _new_db_connection(self, path: Any, multithreading: Any, timeout: Any) -> sqlite3.Connection:
        """persist-queue's connection factory, with our pragmas (and hook) applied."""
        conn: sqlite3.Connection = super()._new_db_connection(path, multithreading, timeout)
        try:
            db.configure(conn, self._pragmas)
            if self._on_connect is not None:
                self._on_connect(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- through the side connection, by the table's class-level names -------------------------

    def read(self, item_id: int) -> bytes | None:
        """The stored bytes of one item (None if it is gone)."""
        row = (
            self._side()
            .execute(f"SELECT data FROM {self._table_name} WHERE {self._key_column} = ?", (item_id,))
            .fetchone()
        )
        return None if row is None else bytes(row[0] or b"")

    def read_many(self, item_ids: Sequence[int]) -> dict[int, bytes]:
        """The stored bytes of these items by id (the ones gone are missing): one SELECT per 500 ids."""
        conn = self._side()
        out: dict[int, bytes] = {}
        for placeholders, chunk in _in_chunks(item_ids):
            rows = conn.execute(
                f"SELECT {self._key_column}, data FROM {self._table_name} WHERE {self._key_column} IN {placeholders}",
                chunk,
            )
            out.update((int(key), bytes(data or b"")) for key, data in rows)
        return out

    def headers(self) -> list[tuple[int, bytes, int]]:
        """``(id, first HEADER_BYTES bytes, length)`` of every unacknowledged item, oldest first."""
        rows = (
            self._side()
            .execute(
                f"SELECT {self._key_column}, substr(data, 1, {HEADER_BYTES}), length(data) FROM {self._table_name}"
                f" WHERE status < {AckStatus.acked} ORDER BY {self._key_column}"
            )
            .fetchall()
        )
        return [(int(i), bytes(prefix or b""), int(size or 0)) for i, prefix, size in rows]

    def delete(self, *item_ids: int) -> None:
        """Acknowledge items: delete their rows, one transaction, no fsync of its own."""
        conn = self._side()
        sql = f"DELETE FROM {self._table_name} WHERE {self._key_column} IN "
        chunks = list(_in_chunks(item_ids))
        if len(chunks) == 1:
            conn.execute(sql + chunks[0][0], chunks[0][1])
            return
        with db.transaction(conn):  # several statements, one transaction
            for placeholders, chunk in chunks:
                conn.execute(sql + placeholders, chunk)

    def free_pages_bytes(self) -> int:
        """Room inside the file (pages freed by deletes that SQLite reuses before growing it)."""
        return db.free_pages_bytes(self._side())

    def insert_many(self, payloads: list[bytes]) -> None:
        """Add items in ONE transaction (a salvage), in the order given, as persist-queue's put() stores them."""
        with db.transaction(self._side()) as conn:
            conn.executemany(
                f"INSERT INTO {self._table_name} (data, timestamp, status) VALUES (?, ?, {AckStatus.inited})",
                [(payload, time.time()) for payload in payloads],
            )
        # The side connection commits with synchronous=NORMAL: make this one durable now.
        self._side().execute("PRAGMA wal_checkpoint(FULL)")

    @classmethod
    def table_for(cls, name: str) -> str:
        """The table persist-queue keeps the items of queue ``name`` in (as ``_table_name`` spells it)."""
        return f"`{cls._TABLE_NAME}_{name}`"

    @staticmethod
    def readable(status: int | None) -> bool:
        """An item not yet acknowledged (rows of older collectors may be marked acked)."""
        return status is None or int(status) < int(AckStatus.acked)

    def checkpoint(self) -> None:
        """Fold the WAL into the database and truncate it."""
        self._side().execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Close persist-queue's connections and ours."""
        super().close()
        if self.side is not None:
            self.side.close()
            self.side = None

    def _side(self) -> sqlite3.Connection:
        if self.side is None:
            raise RuntimeError("queue table is closed")
        return self.side


_IDS_PER_STATEMENT = 500  # older SQLite builds take at most 999 parameters per statement


def _in_chunks(item_ids: Sequence[int]) -> Iterator[tuple[str, Sequence[int]]]:
    """``item_ids`` in chunks of at most :data:`_IDS_PER_STATEMENT`, each with its ``(?,?,...)``."""
    for i in range(0, len(item_ids), _IDS_PER_STATEMENT):
        chunk = item_ids[i : i + _IDS_PER_STATEMENT]
        yield f"({','.join('?' * len(chunk))})", chunk


__all__ = ["HEADER_BYTES", "QueueTable", "RawBytes"]
