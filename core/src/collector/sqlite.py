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
  by itself when space returns.

A low-level module: it imports nothing of the runtime, the CLI or the
configuration, so every store (and persist-queue's connections) can use it.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

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


def move_aside(path: Path) -> Path:
    """Rename ``path`` and its ``-wal``/``-shm``/``-journal`` files to ``*.corrupt-<stamp>``.

    Returns the new name of the main file.  The files are kept for a
    post-mortem; nothing is deleted.
    """
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    suffix = f".corrupt-{stamp}"
    serial = 1
    while any(Path(f"{path}{extra}{suffix}").exists() for extra in ("", "-wal", "-shm", "-journal")):
        suffix = f".corrupt-{stamp}-{serial}"  # two failures within one second
        serial += 1
    for extra in ("", "-wal", "-shm", "-journal"):
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


__all__ = [
    "SYNCHRONOUS",
    "ConnectHook",
    "Durability",
    "Pragmas",
    "configure",
    "connect",
    "is_corrupt",
    "is_disk_full",
    "move_aside",
    "open_or_move_aside",
    "synchronous_for",
    "transaction",
]
