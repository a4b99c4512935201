"""Opening SQLite files the one way the collector's stores need (see docs/delivery.md).

The durable queue, the state store and the dead-letter store each keep data
in an SQLite file, and each needs the same three things, kept here once:

* **Pragmas.** WAL; ``synchronous=FULL`` (a commit is on disk when it
  returns) or ``NORMAL`` for ``durability: relaxed``; a busy timeout so that
  several processes (``collector dlq`` beside a running collector) wait for
  each other instead of failing; optionally a short WAL that is checkpointed
  often and truncated back, so that a store that filled its disk keeps room
  for the small writes that drain it (docs/delivery.md, "Disk full").
* **Corruption.** A file that SQLite reports as damaged (not a database,
  malformed pages) is moved aside as ``<name>.corrupt-<stamp>`` with its
  ``-wal``/``-shm`` files and a fresh one is started, so a damaged file never
  stops the collector.  Only real corruption: "database is locked" or an I/O
  error is raised to the caller, never a reason to set data aside.
* **Disk full.** ``SQLITE_FULL`` or ``ENOSPC``, recognised the same way by
  every store, so that each refuses new data with backpressure and recovers
  by itself when space returns; and one free-space check
  (:func:`below_reserve`) for the ``min_free_bytes`` reserve that the queue
  and the dead letters both keep.
* **Salvage.** :func:`read_salvageable` reads every row it still can from a
  damaged file, one page range at a time, and counts the rows it cannot.

A low-level module: it imports nothing of the runtime, the CLI or the
configuration, so every store (and persist-queue's connections) can use it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

log = logging.getLogger("collector.sqlite")

Durability = Literal["full", "relaxed"]
Synchronous = Literal["FULL", "NORMAL"]

#: What ``durability`` means for SQLite's ``synchronous`` pragma.
SYNCHRONOUS: dict[str, Synchronous] = {"full": "FULL", "relaxed": "NORMAL"}

#: Called with every connection a store opens, after its pragmas: for
#: instrumentation, and for tests that need a slow or a full disk.
ConnectHook = Callable[[sqlite3.Connection], None]

_T = TypeVar("_T")

# Primary result codes (the low byte of an extended code).
_CORRUPT_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_CORRUPT_TEXT = ("file is not a database", "database disk image is malformed")


@dataclass(frozen=True)
class Pragmas:
    """The per-connection settings of a store (SQLite keeps none of them in the file but WAL)."""

    synchronous: Synchronous = "FULL"
    busy_timeout_s: float = 30.0
    #: checkpoint the WAL after this many pages (SQLite's default: 1000); None keeps the default
    wal_autocheckpoint_pages: int | None = None
    #: truncate the WAL back to this many bytes after a checkpoint; None keeps it as large as it grew
    journal_size_limit_bytes: int | None = None


def synchronous_for(durability: str) -> Synchronous:
    """``FULL`` for ``durability: full``, ``NORMAL`` for ``relaxed``; ValueError otherwise."""
    try:
        return SYNCHRONOUS[durability]
    except KeyError:
        raise ValueError(f"durability must be 'full' or 'relaxed', not {durability!r}") from None


def configure(conn: sqlite3.Connection, pragmas: Pragmas) -> None:
    """Apply ``pragmas`` to a connection someone else opened (e.g. persist-queue)."""
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={pragmas.synchronous}")
    conn.execute(f"PRAGMA busy_timeout={int(pragmas.busy_timeout_s * 1000)}")
    if pragmas.wal_autocheckpoint_pages is not None:
        conn.execute(f"PRAGMA wal_autocheckpoint={int(pragmas.wal_autocheckpoint_pages)}")
    if pragmas.journal_size_limit_bytes is not None:
        conn.execute(f"PRAGMA journal_size_limit={int(pragmas.journal_size_limit_bytes)}")


def connect(path: Path, pragmas: Pragmas, *, on_connect: ConnectHook | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (explicit ``BEGIN``), usable from any thread.

    Callers serialise their own use of it (each store holds a lock).
    """
    conn = sqlite3.connect(str(path), timeout=pragmas.busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        configure(conn, pragmas)
        if on_connect is not None:
            on_connect(conn)
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back if the block raises.

    IMMEDIATE takes the write lock up front, so a read-modify-write cannot
    fail half-way with "database is locked" after it has read.  SQLite rolls
    back by itself on some errors (a full disk), so the ROLLBACK is only sent
    while a transaction is still open: it must not mask the real error.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def is_corrupt(exc: BaseException) -> bool:
    """True only when SQLite says the file itself is damaged.

    Not for "database is locked" (SQLITE_BUSY), I/O errors or a full disk:
    moving a healthy file aside would hide its data.
    """
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _CORRUPT_CODES:
        return True
    text = str(exc)
    return any(marker in text for marker in _CORRUPT_TEXT)


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLITE_FULL ("database or disk is full") and for ENOSPC from the file system."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF == sqlite3.SQLITE_FULL:
            return True
        return "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


def free_bytes(directory: Path, enough: int, *, inside: Callable[[], int] | None = None) -> int:
    """Free space for a store in ``directory``: the file system's, plus ``inside()`` (free pages in the file).

    ``inside`` is only asked when the file system alone has less than
    ``enough``: a statvfs per write is cheap, queries under a store's lock
    are not.  An unreadable file system counts as roomy (the write itself
    then finds out).
    """
    try:
        st = os.statvfs(directory)
    except OSError:
        return 1 << 62
    free = st.f_bavail * st.f_frsize
    if free >= enough or inside is None:
        return free
    try:
        free += inside()
    except (sqlite3.Error, RuntimeError):
        pass
    return free


def below_reserve(directory: Path, reserve: int, size: int, *, inside: Callable[[], int] | None = None) -> bool:
    """True when writing ``size`` bytes in ``directory`` would leave less than ``reserve`` free.

    The ``min_free_bytes`` check of every store (docs/delivery.md, "Disk
    full"): a write that would eat into the reserve is refused like a full
    disk, so that draining (acks, checkpoints) keeps room.  ``reserve`` 0
    never refuses.
    """
    if reserve <= 0:
        return False
    return free_bytes(directory, reserve + size, inside=inside) - size < reserve


def free_pages_bytes(conn: sqlite3.Connection) -> int:
    """Room inside a database file: pages freed by deletes, reused before the file grows."""
    pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    return int(pages) * int(size)


#: The files of one SQLite database: the file itself and what SQLite keeps beside it.
FILE_SET = ("", "-wal", "-shm", "-journal")


def remove_database(path: Path) -> None:
    """Delete the database ``path`` with its ``-wal``/``-shm``/``-journal`` files (missing ones are fine)."""
    for extra in FILE_SET:
        Path(f"{path}{extra}").unlink(missing_ok=True)


def move_aside(path: Path) -> Path:
    """Rename ``path`` and its ``-wal``/``-shm``/``-journal`` files to ``*.corrupt-<stamp>``.

    Returns the new name of the main file.  The files are kept for a
    post-mortem; nothing is deleted.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    suffix = f".corrupt-{stamp}"
    serial = 1
    while any(Path(f"{path}{extra}{suffix}").exists() for extra in FILE_SET):
        suffix = f".corrupt-{stamp}-{serial}"  # two failures within one second
        serial += 1
    for extra in FILE_SET:
        source = Path(f"{path}{extra}")
        if source.exists():
            os.replace(source, Path(f"{source}{suffix}"))
    return Path(f"{path}{suffix}")


def open_or_move_aside(
    path: Path, open_store: Callable[[], _T], *, what: str, logger: logging.Logger | None = None
) -> tuple[_T, Path | None]:
    """``open_store()``; if SQLite reports ``path`` as corrupt, move it aside and open a fresh one.

    ``open_store`` must close whatever it opened before raising.  Any other
    error (locked, I/O, disk full) is raised unchanged and the file stays
    where it is.  Returns what ``open_store`` returned and the name the
    damaged file was moved to (None when it was healthy).
    """
    try:
        return open_store(), None
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        moved = move_aside(path)
        (logger or log).error("%s %s is damaged (%s); moved it to %s and started a new one", what, path, exc, moved)
        return open_store(), moved


#: At most this many row ids are looked up one by one in a damaged range.
SALVAGE_MAX_PROBES = 1_000_000
_ASIDE = re.compile(r"^(?P<base>.*)\.corrupt-(?P<stamp>[^/]*)$")


@dataclass
class Salvage:
    """What :func:`read_salvageable` could read from a damaged file."""

    rows: list[tuple[Any, ...]]  # readable rows, by key
    unreadable: int  # row ids in damaged ranges that could not be read (at most this many rows)
    error: str | None = None  # why nothing at all could be read (the schema is damaged), else None


def wal_of(path: Path) -> Path:
    """The ``-wal`` file that was moved aside with ``path`` (``x.db.corrupt-S`` -> ``x.db-wal.corrupt-S``)."""
    match = _ASIDE.match(path.name)
    if match is None:
        return Path(f"{path}-wal")
    return path.with_name(f"{match['base']}-wal.corrupt-{match['stamp']}")


def read_salvageable(path: Path, table: str, *, key: str, columns: str) -> Salvage:
    """Every row of ``table`` that can still be read from the damaged database ``path``.

    ``path`` is never changed: it (and its moved-aside WAL, see
    :func:`wal_of`) is copied to a temporary directory beside it and read
    there.  The table is scanned by ``key`` upwards until the first error,
    then downwards until the first error, and the ids in between are looked
    up one at a time: a lookup that fails is a row lost to the damage.
    """
    work = Path(tempfile.mkdtemp(prefix=".salvage-", dir=path.parent))
    try:
        copy = work / "salvage.db"
        shutil.copyfile(path, copy)
        wal = wal_of(path)
        attempts = [True, False] if wal.exists() else [False]
        last = "no attempt"
        for with_wal in attempts:
            if with_wal:
                shutil.copyfile(wal, Path(f"{copy}-wal"))
            else:
                Path(f"{copy}-wal").unlink(missing_ok=True)
                Path(f"{copy}-shm").unlink(missing_ok=True)
            try:
                conn = sqlite3.connect(str(copy), isolation_level=None)
            except sqlite3.Error as exc:
                last = str(exc)
                continue
            try:
                return _salvage_rows(conn, table, key, columns)
            except sqlite3.DatabaseError as exc:  # the schema itself: try without the WAL
                last = str(exc)
            finally:
                conn.close()
        return Salvage([], 0, error=last)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _salvage_rows(conn: sqlite3.Connection, table: str, key: str, columns: str) -> Salvage:
    conn.execute("SELECT name FROM sqlite_master").fetchall()  # the schema itself: raises if unreadable
    select = f"SELECT {key}, {columns} FROM {table}"
    rows: dict[int, tuple[Any, ...]] = {}
    low = _scan(conn, f"{select} WHERE {key} > ? ORDER BY {key}", 0, rows, up=True)  # ids start at 1
    if low is None:  # read to the end: nothing damaged in this table
        return Salvage([rows[k] for k in sorted(rows)], 0)
    high = _scan(conn, f"{select} WHERE {key} < ? ORDER BY {key} DESC", 1 << 62, rows, up=False)
    if high is None or high >= 1 << 62:
        high = _highest_id(conn, table, low)
    unreadable = 0
    for item_id in range(low + 1, min(high, low + 1 + SALVAGE_MAX_PROBES)):
        try:
            row = conn.execute(f"{select} WHERE {key} = ?", (item_id,)).fetchone()
        except sqlite3.DatabaseError:
            unreadable += 1
            continue
        if row is not None:
            rows[int(row[0])] = row
    if high - low - 1 > SALVAGE_MAX_PROBES:
        log.error(
            "salvage of %s: %d ids past the probe limit were not tried", table, high - low - 1 - SALVAGE_MAX_PROBES
        )
    return Salvage([rows[k] for k in sorted(rows)], unreadable)


def _scan(conn: sqlite3.Connection, sql: str, start: int, rows: dict[int, tuple[Any, ...]], *, up: bool) -> int | None:
    """Rows in key order from ``start`` until an error: the last key read (``start`` if none), None at the end."""
    last = start
    try:
        for row in conn.execute(sql, (start,)):
            last = int(row[0])
            rows[last] = row
    except sqlite3.DatabaseError:
        return last
    return None if up else last if last != start else None


def _highest_id(conn: sqlite3.Connection, table: str, low: int) -> int:
    """One past the highest id the table has handed out (AUTOINCREMENT's sqlite_sequence), if readable."""
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table.strip('`"'),)).fetchone()
    except sqlite3.DatabaseError:
        row = None
    return int(row[0]) + 1 if row else low + 1  # unknown: nothing to probe


__all__ = [
    "FILE_SET",
    "SALVAGE_MAX_PROBES",
    "SYNCHRONOUS",
    "ConnectHook",
    "Durability",
    "Pragmas",
    "Salvage",
    "below_reserve",
    "configure",
    "connect",
    "free_bytes",
    "free_pages_bytes",
    "is_corrupt",
    "is_disk_full",
    "move_aside",
    "open_or_move_aside",
    "read_salvageable",
    "remove_database",
    "synchronous_for",
    "transaction",
    "wal_of",
]
