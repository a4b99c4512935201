"""The durable queue: persist-queue (SQLite, WAL) with group commit (docs/delivery.md).

Layout on disk, in ``directory``::

    <name>.db, <name>.db-wal, <name>.db-shm   the persist-queue database
    quarantine/<name>-<id>-<ns>.bin           unreadable items, raw bytes
    quarantine/<name>-<id>-<ns>.unreadable    items whose row SQLite could not read (why)
    <name>.db.corrupt-<stamp>                 a damaged database moved aside, kept
    .<name>.db.corrupt-<stamp>.salvaged       what was salvaged from it (a note; see salvage_note)

A damaged database is not set aside whole: :meth:`DurableQueue.open` moves
it aside, starts a fresh one and salvages into it, in one transaction, every
item that can still be read (:func:`collector.sqlite.read_salvageable`); the
rows lost to the damage are counted as quarantined.  ``collector queue
salvage FILE --to EXPORTER`` does the same for a file kept from before.

One queue item is one *group commit*: a dedicated writer thread gathers the
batches that producers hand to :meth:`DurableQueue.put` for up to
``commit_wait_ms`` (or until ``commit_max_events`` events are pending) and
writes them as ONE persist-queue ``put``, i.e. one SQLite transaction and one
fsync of the WAL.  Every producer of the group is answered after that commit.
Measured with tests/bench/bench_queue.py (100 producers, 100-event batches,
synchronous=FULL, same VM): one item per put 262k events/s; grouped into
1000-event items 585k-835k events/s (runs vary); plain sqlite3 with 100 rows
per commit, the baseline, 270k-280k rows/s.

Stored payload (orjson bytes; persist-queue gets a pass-through serializer)::

    {"t": <enqueued_at>, "n": <event count>, "e": [<event>, ...]}

The writer assembles it from each producer's own ``orjson.dumps(events)``
without re-serialising, and the fixed ``{"t":..,"n":..`` prefix lets
:meth:`DurableQueue.open` rebuild the counters without decoding every event.

How persist-queue is used, and the one class that depends on its shape, is
:mod:`collector.runtime.queue.storage`.  Claims live in memory (a sender's
``get`` reads the item with a plain SELECT), an ``ack`` deletes the row in
one transaction without an fsync of its own, and waiting is ours (a
:class:`threading.Condition`), never persist-queue's ``get`` (which may sleep
up to 10 s past a missed wake-up).  Opening, corruption and disk-full
detection are :mod:`collector.sqlite`, shared with the state store and the
dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import heapq
import logging
import os
import re
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from collector import sqlite as db
from collector.clock import Clock, SystemClock
from collector.errors import BackpressureError
from collector.events import encoding_of
from collector.runtime.queue import QueueItem, QueueStats
from collector.runtime.queue.storage import QueueTable

log = logging.getLogger("collector.runtime.queue")

Durability = db.Durability

# Once full, intake resumes when acks bring the bytes down to this fraction of
# max_bytes; the hysteresis keeps receivers from flapping between 503 and 200.
_RESUME_FRACTION = 0.9
# Room for the {"t":..,"n":..,"e":[]} wrapper when checking max_bytes.
_ENVELOPE_BYTES = 64
_HEADER = re.compile(rb'\{"t":(-?[0-9][0-9.eE+-]*),"n":([0-9]+),"e":\[')
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# The WAL is checkpointed often and truncated back to this size, so that a
# queue that filled its disk keeps room for the small writes draining needs
# (acks and checkpoints are writes too); see DurableQueue.min_free_bytes.
_WAL_AUTOCHECKPOINT_PAGES = 128
_JOURNAL_SIZE_LIMIT = 1024 * 1024


@dataclass
class _Pending:
    """One producer's batch waiting for the writer thread."""

    events: list[dict[str, Any]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    arrived: float  # time.monotonic()


@dataclass(frozen=True)
class _Meta:
    """What stats() needs to know about one unacknowledged item."""

    events: int
    size: int
    enqueued_at: float


class _Unreadable(Exception):
    """A stored payload that does not decode to a batch."""


def _encode(enqueued_at: float, count: int, parts: Iterable[bytes]) -> bytes:
    """Build the stored payload from already serialised event lists.

    ``parts`` are the insides of ``orjson.dumps(events)`` (without brackets),
    so the result is the orjson encoding of {"t":..,"n":..,"e":[...]}.
    """
    body = b",".join(part for part in parts if part)
    return b'{"t":%s,"n":%d,"e":[%s]}' % (orjson.dumps(enqueued_at), count, body)


def read_header(prefix: bytes) -> tuple[float, int] | None:
    """(enqueued_at, event count) from the first bytes of a payload."""
    match = _HEADER.match(prefix)
    if match is None:
        return None
    try:
        return float(match.group(1)), int(match.group(2))
    except ValueError:
        return None


def _decode(data: bytes) -> tuple[float, list[dict[str, Any]]]:
    """(enqueued_at, events) of a stored payload, or raise _Unreadable."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _Unreadable(f"not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise _Unreadable("not an object")
    stamp, events, count = doc.get("t"), doc.get("e"), doc.get("n")
    if not isinstance(stamp, int | float) or isinstance(stamp, bool):
        raise _Unreadable("no enqueued_at")
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise _Unreadable("events are not a list of objects")
    if count != len(events):
        raise _Unreadable(f"event count {count!r} does not match {len(events)} events")
    return float(stamp), events


def _settle_all(results: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    """Runs on a producer's loop: answer its waiting put() calls."""
    for future, exc in results:
        if future.done():  # the producer was cancelled meanwhile
            continue
        if exc is None:
            future.set_result(None)
        else:
            future.set_exception(exc)


class DurableQueue:
    """Durable :class:`collector.runtime.queue.BatchQueue` on persist-queue.

    Threads: ``put`` runs on any event loop (several loops are fine) and only
    hands the batch to the writer thread; ``get``/``ack``/``release`` run in
    sender threads; ``open``/``close`` block and belong in a worker thread.
    """

    #: After a "disk full" commit, puts are refused this long, then tried again.
    disk_full_retry_s: float = 1.0
    #: retry_after given to producers while the queue is over max_bytes.
    full_retry_after_s: float = 1.0

    def __init__(
        self,
        directory: Path,
        *,
        name: str = "queue",
        max_bytes: int = 256 * 1024 * 1024,
        durability: Durability = "full",
        commit_wait_ms: float = 2.0,
        commit_max_events: int = 1000,
        min_free_bytes: int = 0,
        on_connect: db.ConnectHook | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"queue name {name!r}: use letters, digits, '_', '-', '.'")
        self._pragmas = db.Pragmas(
            synchronous=db.synchronous_for(durability),
            wal_autocheckpoint_pages=_WAL_AUTOCHECKPOINT_PAGES,
            journal_size_limit_bytes=_JOURNAL_SIZE_LIMIT,
        )
        if max_bytes <= 0 or commit_max_events <= 0 or commit_wait_ms < 0:
            raise ValueError("max_bytes and commit_max_events must be > 0, commit_wait_ms >= 0")
        # Stamps commits (enqueued_at, which max_age is measured from): the service's clock, so tests can move it.
        self._clock: Clock = clock or SystemClock()
        self.directory = Path(directory)
        self.name = name
        self.max_bytes = max_bytes
        self.durability: Durability = durability
        self._commit_wait_s = commit_wait_ms / 1000.0
        self._commit_max_events = commit_max_events
        #: refuse new data while less than this is free on the queue's disk (0: only a real ENOSPC)
        self.min_free_bytes = min_free_bytes
        #: called with every SQLite connection the queue opens, after its
        #: pragmas (instrumentation; tests use it for a slow or a full disk)
        self.on_connect = on_connect

        self._pq: QueueTable | None = None
        self._writer: threading.Thread | None = None
        self._open = False
        #: damaged database files moved aside by open() since construction
        self.databases_moved_aside = 0
        #: events salvaged from damaged files into this queue since construction
        self.salvaged_events = 0
        #: the damaged files kept (moved aside and salvaged) since construction
        self.damaged_files: list[Path] = []

        # Producer hand-off to the writer thread.
        self._pending_cv = threading.Condition()
        self._pending: deque[_Pending] = deque()
        self._pending_events = 0
        self._closing = False

        # Serialises each persist-queue call with the in-memory bookkeeping
        # that mirrors it, so that e.g. a get() cannot claim an item that the
        # writer has committed but not yet registered.  Always taken before
        # _state_cv's lock, never after.
        self._db_lock = threading.Lock()

        # In-memory mirror of the table, for stats() and for waiting getters.
        self._state_cv = threading.Condition()
        self._meta: OrderedDict[int, _Meta] = OrderedDict()  # unacked, by id
        self._claimed: set[int] = set()
        # Ids not claimed, as a heap (oldest first): a claim takes from the top instead of walking
        # past every claimed id.  Acknowledged or dropped ids leave it when they reach the top.
        self._ready: list[int] = []
        self._events = 0
        self._bytes = 0
        self._quarantined = 0
        self._full = False  # over max_bytes; cleared by acks
        self._disk_full = False  # last commit hit ENOSPC; cleared by a commit
        self._disk_retry_at = 0.0  # time.monotonic() when puts are tried again

    # ------------------------------------------------------------------ paths

    @property
    def db_path(self) -> Path:
        return self.directory / f"{self.name}.db"

    @property
    def quarantine_dir(self) -> Path:
        return self.directory / "quarantine"

    # ------------------------------------------------------------- lifecycle

    def open(self) -> None:
        """Open (or create) the database, rebuild counters, start the writer.

        A database SQLite reports as damaged is moved aside (and kept), a
        fresh one started, and every item that can still be read salvaged
        into it (docs/delivery.md, "Corruption and quarantine"); any other
        error (locked, I/O) is raised and the file left alone.
        """
        if self._open:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        _, moved = db.open_or_move_aside(self.db_path, self._open_and_rebuild, what=f"queue {self.name}:", logger=log)
        if moved is not None:
            self.databases_moved_aside += 1
            try:
                self.salvage(moved)
            except Exception as exc:  # the file is kept: `collector queue salvage` can try again
                log.error(
                    "queue %s: salvaging %s failed (%s); it is kept, retry with `collector queue salvage`",
                    self.name,
                    moved,
                    exc,
                )
        self._closing = False
        self._open = True
        self._writer = threading.Thread(target=self._writer_loop, name=f"queue-writer-{self.name}", daemon=True)
        self._writer.start()

    def close(self) -> None:
        """Finish pending commits, stop the writer, close the database."""
        if not self._open:
            return
        with self._pending_cv:
            self._closing = True
            self._pending_cv.notify_all()
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        with self._state_cv:
            self._open = False
            self._state_cv.notify_all()  # blocked get() calls return None
        with self._db_lock:
            self._checkpoint()
            self._close_storage()

    def _open_and_rebuild(self) -> QueueTable:
        """Open the table and rebuild the counters; on failure leave nothing open."""
        try:
            self._pq = QueueTable(
                self.directory,
                name=self.name,
                db_file_name=self.db_path.name,
                pragmas=self._pragmas,
                on_connect=self.on_connect,
            )
            self._rebuild()
        except BaseException:
            self._close_storage()
            self._reset_state()
            raise
        return self._pq

    def _close_storage(self) -> None:
        if self._pq is not None:
            self._pq.close()
            self._pq = None

    def _checkpoint(self) -> None:
        """Fold the WAL into the database so that it does not linger on disk."""
        try:
            self._require_storage().checkpoint()
        except sqlite3.Error as exc:
            log.warning("queue %s: WAL checkpoint on close failed: %s", self.name, exc)

    def _reset_state(self) -> None:
        with self._state_cv:
            self._reset_counters_locked()

    def _rebuild(self) -> None:
        """Counters from the table; quarantine rows whose header is unreadable.

        Reads only the first bytes of each payload: decoding every event of a
        256 MiB backlog would make start-up slow.  Full validation happens
        when get() hands the item out.
        """
        table = self._require_storage()
        # Rows marked acked by collectors that acknowledged through
        # persist-queue's ack() (before acks deleted rows): one scan at open.
        table.clear_acked_data(max_delete=0, keep_latest=0)
        rows = table.headers()
        unreadable: list[int] = []
        with self._state_cv:
            self._reset_counters_locked()
            for item_id, prefix, size in rows:
                header = read_header(prefix)
                if header is None:
                    unreadable.append(item_id)
                    continue
                self._register_locked(item_id, _Meta(header[1], size, header[0]))
        for item_id in unreadable:
            self._quarantine(item_id, table.read(item_id) or b"", "unreadable header")

    def salvage(self, path: Path) -> tuple[int, int, int]:
        """Copy every readable item of the damaged queue file ``path`` into this (open) queue.

        One transaction for all of them; items that cannot be read or
        decoded are counted as quarantined (their bytes, where readable, go
        to ``quarantine/``).  ``path`` is only read, never changed; a note
        :func:`salvage_note` records the result.  Returns (events, items,
        quarantined).  Blocking, like open().
        """
        table = self._require_storage()
        found = db.read_salvageable(path, self._table_in(path), key="_id", columns="data, status")
        if found.error is not None:
            log.error("queue %s: nothing could be read from %s (%s); it is kept", self.name, path, found.error)
        payloads: list[bytes] = []
        events = 0
        quarantined = found.unreadable
        for item_id, data, status in found.rows:
            if not table.readable(status):
                continue
            raw = bytes(data or b"")
            try:
                _, batch = _decode(raw)
            except _Unreadable as exc:
                self._keep_quarantined(item_id, raw, f"salvaged from {path.name}: {exc}")
                quarantined += 1
                continue
            payloads.append(raw)
            events += len(batch)
        if payloads:
            with self._db_lock:
                table.insert_many(payloads)
        # Offline use only (open(), the CLI): no item is claimed, the counters are rebuilt from the table.
        self._rebuild()
        with self._state_cv:
            self._quarantined += quarantined
        self.salvaged_events += events
        self.damaged_files.append(path)
        note = (
            f"salvaged {events} event(s) in {len(payloads)} item(s) into {self.db_path}; "
            f"{quarantined} item(s) unreadable\n"
        )
        with contextlib.suppress(OSError):
            salvage_note(path).write_text(note, encoding="utf-8")
        log.error(
            "queue %s: salvaged %d event(s) in %d item(s) from the damaged %s; %d item(s) could not be read "
            "(quarantined); the damaged file is kept",
            self.name,
            events,
            len(payloads),
            path,
            quarantined,
        )
        return events, len(payloads), quarantined

    def _table_in(self, path: Path) -> str:
        """The queue table of a (possibly damaged) file: ours, or the one ack-queue table it has."""
        ours = QueueTable.table_for(self.name)
        try:
            conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
            try:
                names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            finally:
                conn.close()
        except sqlite3.Error:
            return ours
        if ours.strip("`") in names:
            return ours
        tables = [n for n in names if n.startswith("ack_queue_")]
        return f"`{tables[0]}`" if len(tables) == 1 else ours

    def _reset_counters_locked(self) -> None:
        self._meta.clear()
        self._claimed.clear()
        self._ready.clear()
        self._events = self._bytes = 0
        # The writer decides afresh whether the reopened queue is full.
        self._full = self._disk_full = False

    def _require_storage(self) -> QueueTable:
        if self._pq is None:
            raise RuntimeError(f"queue {self.name} is not open")
        return self._pq

    # ------------------------------------------------------------- producers

    async def put(self, events: list[dict[str, Any]]) -> None:
        """Commit ``events`` as part of the next group; return once durable.

        Raises BackpressureError while refusing (full, disk full, closed),
        the commit's error if it failed, or orjson's TypeError for events
        that are not JSON-serialisable.  Cancelling the caller does not
        withdraw a batch already handed to the writer.
        """
        if self._closing:
            raise BackpressureError(f"queue {self.name} is closed", retry_after=1.0)
        if not self._open:
            raise RuntimeError(f"queue {self.name} is not open")
        if not events:
            return
        self.check_intake()
        loop = asyncio.get_running_loop()
        pending = _Pending(events, loop, loop.create_future(), time.monotonic())
        with self._pending_cv:
            if self._closing:
                raise BackpressureError(f"queue {self.name} is closed", retry_after=1.0)
            self._pending.append(pending)
            self._pending_events += len(events)
            # The writer sleeps either for a first batch or until the group
            # deadline; wake it only when one of those changes.
            if len(self._pending) == 1 or self._pending_events >= self._commit_max_events:
                self._pending_cv.notify()
        await pending.future

    def check_intake(self) -> None:
        """Raise BackpressureError now if a put would be refused (full, disk full).

        After a disk-full error the refusal lasts ``disk_full_retry_s``; then a
        put is let through to find out whether there is room again, so intake
        resumes by itself."""
        if self._full:
            raise BackpressureError(
                f"queue {self.name} is full ({self._bytes} of {self.max_bytes} bytes)",
                retry_after=self.full_retry_after_s,
            )
        if self._disk_full:
            remaining = self._disk_retry_at - time.monotonic()
            if remaining > 0:
                raise BackpressureError(f"queue {self.name}: disk full", retry_after=remaining)

    # ---------------------------------------------------------- writer thread

    def _writer_loop(self) -> None:
        while True:
            group = self._next_group()
            if group is None:
                return
            try:
                self._commit_group(group)
            except BaseException as exc:  # never leave a producer waiting
                log.exception("queue %s: writer failed", self.name)
                self._answer([(p, exc) for p in group])

    def _next_group(self) -> list[_Pending] | None:
        """Wait for batches, gather for up to commit_wait, take one group."""
        with self._pending_cv:
            while not self._pending:
                if self._closing:
                    return None
                self._pending_cv.wait()
            deadline = self._pending[0].arrived + self._commit_wait_s
            while self._pending_events < self._commit_max_events and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._pending_cv.wait(remaining)
            return self._take_group_locked()

    def _take_group_locked(self) -> list[_Pending]:
        group: list[_Pending] = []
        count = 0
        while self._pending:
            size = len(self._pending[0].events)
            if group and count + size > self._commit_max_events:
                break
            group.append(self._pending.popleft())
            count += size
        self._pending_events -= count
        return group

    def _commit_group(self, group: list[_Pending]) -> None:
        accepted, parts, answers = self._admit(group)
        if accepted:
            count = sum(len(p.events) for p in accepted)
            enqueued_at = self._clock.time()
            error = self._write(_encode(enqueued_at, count, parts), count, enqueued_at)
            answers.extend((p, error) for p in accepted)
        self._answer(answers)

    def _admit(
        self, group: list[_Pending]
    ) -> tuple[list[_Pending], list[bytes], list[tuple[_Pending, BaseException | None]]]:
        """Serialise each batch; refuse those that would pass max_bytes or the disk's reserve."""
        refused: list[tuple[_Pending, BaseException | None]] = []
        serialised: list[tuple[_Pending, bytes]] = []
        for pending in group:
            try:
                inner = encoding_of(pending.events)
                if inner is None:
                    inner = orjson.dumps(pending.events)[1:-1]
            except orjson.JSONEncodeError as exc:  # this producer's data alone
                refused.append((pending, exc))
                continue
            serialised.append((pending, inner))
        # One statvfs for the whole group when it fits: a statvfs per batch was ~1/3 of the
        # writer's time (each one gives up the GIL and waits to get it back).
        # Only a look: when the whole group does not fit, each batch is checked (and refused) as before.
        total = _ENVELOPE_BYTES + sum(len(inner) + 1 for _, inner in serialised)
        disk_ok = not self._disk_full and not db.below_reserve(
            self.directory, self.min_free_bytes, total, inside=self._free_pages_bytes
        )
        accepted: list[_Pending] = []
        parts: list[bytes] = []
        group_bytes = _ENVELOPE_BYTES
        for pending, inner in serialised:
            size = group_bytes + len(inner) + 1
            refusal = None if disk_ok else self._disk_refusal(size)
            if refusal is None:
                refusal = self._capacity_refusal(size, alone=not accepted)
            if refusal is not None:
                refused.append((pending, refusal))
                continue
            accepted.append(pending)
            parts.append(inner)
            group_bytes = size
        return accepted, parts, refused

    def _disk_refusal(self, group_bytes: int) -> BackpressureError | None:
        """The error for a group of group_bytes while the disk is full or would fall below min_free_bytes."""
        if self._disk_full and time.monotonic() < self._disk_retry_at:
            return BackpressureError(
                f"queue {self.name}: disk full", retry_after=self._disk_retry_at - time.monotonic()
            )
        if db.below_reserve(self.directory, self.min_free_bytes, group_bytes, inside=self._free_pages_bytes):
            # Refuse before the disk is full: draining needs a little room to
            # write (claims, acks, checkpoints). Retried like a full disk.
            self._enter_disk_full(OSError(errno.ENOSPC, f"less than min_free_bytes={self.min_free_bytes} free"))
            return BackpressureError(f"queue {self.name}: disk nearly full", retry_after=self.disk_full_retry_s)
        return None

    def _capacity_refusal(self, group_bytes: int, *, alone: bool) -> BackpressureError | None:
        """The error for a batch that would take the group to group_bytes, past max_bytes.

        A batch larger than max_bytes on its own is accepted into an empty
        queue (as MemoryQueue does), so that it cannot be refused forever.
        """
        with self._state_cv:
            over = self._bytes + group_bytes > self.max_bytes and not (alone and not self._meta)
            if self._full or over:
                if not self._full:
                    log.warning(
                        "queue %s: full (%d of %d bytes); refusing new data",
                        self.name,
                        self._bytes,
                        self.max_bytes,
                    )
                self._full = True
                return BackpressureError(
                    f"queue {self.name} is full ({self._bytes} of {self.max_bytes} bytes)",
                    retry_after=self.full_retry_after_s,
                )
        return None

    def _write(self, payload: bytes, count: int, enqueued_at: float) -> BaseException | None:
        """One persist-queue put (one transaction); the error for the group."""
        try:
            with self._db_lock:
                item_id = self._require_storage().put(payload)
                assert item_id is not None
                with self._state_cv:
                    self._register_locked(item_id, _Meta(count, len(payload), enqueued_at))
                    self._state_cv.notify()
        except Exception as exc:
            if not db.is_disk_full(exc):
                log.error("queue %s: commit of %d events failed: %s", self.name, count, exc)
                return exc
            self._enter_disk_full(exc)
            error = BackpressureError(f"queue {self.name}: disk full", retry_after=self.disk_full_retry_s)
            error.__cause__ = exc
            return error
        if self._disk_full:
            self._disk_full = False
            log.warning("queue %s: writes succeed again; accepting data", self.name)
        return None

    def _free_pages_bytes(self) -> int:
        """Free pages inside the database (counted by :func:`collector.sqlite.below_reserve` when the disk is low)."""
        with self._db_lock:
            return self._require_storage().free_pages_bytes()

    def _enter_disk_full(self, exc: BaseException) -> None:
        if not self._disk_full:
            log.error(
                "queue %s: disk full (%s); refusing new data, retrying in %.1f s",
                self.name,
                exc,
                self.disk_full_retry_s,
            )
        self._disk_full = True
        self._disk_retry_at = time.monotonic() + self.disk_full_retry_s

    def _answer(self, answers: list[tuple[_Pending, BaseException | None]]) -> None:
        """Resolve the producers' futures, one call_soon_threadsafe per loop."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], BaseException | None]]] = {}
        for pending, exc in answers:
            by_loop.setdefault(pending.loop, []).append((pending.future, exc))
        for loop, results in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle_all, results)
            except RuntimeError:  # that loop is closed: nobody is waiting
                pass

    # ---------------------------------------------------------------- sender

    def get(self, timeout: float) -> QueueItem | None:
        """The oldest unclaimed item, waiting up to ``timeout`` seconds."""
        items = self.get_many(timeout, 1)
        return items[0] if items else None

    def get_many(self, timeout: float, max_events: int) -> list[QueueItem]:
        """The oldest unclaimed items that fit in ``max_events`` events together (always at least one),
        read with one SELECT; waits up to ``timeout`` seconds for the first ([] when none came).

        A sender fills a request of small items (a group commit of a few single-event requests) in
        one trip to its I/O thread instead of one per item.
        """
        self._require_storage()
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            if not self._wait_ready(deadline):
                return []
            claimed = self._claim(max_events)
            items = [item for item in (self._to_item(i, data) for i, data in claimed) if item is not None]
            if items:
                return items
            self._pause_after_miss(deadline)

    def _wait_ready(self, deadline: float) -> bool:
        """True once some item is neither claimed nor acked."""
        with self._state_cv:
            while len(self._meta) <= len(self._claimed):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._open:
                    return False
                self._state_cv.wait(remaining)
            return self._open

    def _pause_after_miss(self, deadline: float) -> None:
        # The counters said "ready" but nothing could be handed out (another sender
        # won the race, or the rows were unreadable): wait briefly rather than spin.
        with self._state_cv:
            self._state_cv.wait(max(0.0, min(0.05, deadline - time.monotonic())))

    def _claim(self, max_events: int) -> list[tuple[int, bytes]]:
        """Claim the oldest unclaimed items (in memory only) and read them: one SELECT for them all.

        A mark on disk is not needed for safety: after a crash every
        unacknowledged row is sent again anyway, so claims live in
        ``_claimed`` (see :mod:`collector.runtime.queue.storage`).  A damaged
        page fails the whole SELECT: then the items are read one by one, so
        that only the unreadable ones are quarantined.
        """
        with self._db_lock:
            if self._pq is None:  # closed while we were waiting
                return []
            with self._state_cv:
                ids = self._take_ready_locked(max_events)
            if not ids:
                return []
            try:
                rows: dict[int, bytes] | None = self._pq.read_many(ids)
            except sqlite3.DatabaseError as exc:
                if not db.is_corrupt(exc):  # locked, I/O: hand them back, the caller retries
                    self._unclaim(ids)
                    raise
                rows = None
        if rows is None:
            return self._read_one_by_one(ids)
        gone = [i for i in ids if i not in rows]
        if gone:  # deleted behind our back: forget them
            with self._state_cv:
                for item_id in gone:
                    self._forget_locked(item_id)
        return [(i, rows[i]) for i in ids if i in rows]

    def _take_ready_locked(self, max_events: int) -> list[int]:
        """Claim the oldest ready ids whose events fit in ``max_events`` (at least one id)."""
        ids: list[int] = []
        total = 0
        ready, meta, claimed = self._ready, self._meta, self._claimed
        while ready:
            item_id = ready[0]
            found = meta.get(item_id)
            if found is None or item_id in claimed:  # acknowledged, dropped or claimed since: a stale entry
                heapq.heappop(ready)
                continue
            if ids and total + found.events > max_events:
                break
            heapq.heappop(ready)
            claimed.add(item_id)
            ids.append(item_id)
            total += found.events
        return ids

    def _unclaim(self, item_ids: Iterable[int]) -> None:
        """Make claimed items ready again (they keep their place: the oldest goes out first)."""
        with self._state_cv:
            for item_id in item_ids:
                if item_id in self._claimed:
                    self._claimed.discard(item_id)
                    heapq.heappush(self._ready, item_id)
            self._state_cv.notify()

    def _read_one_by_one(self, item_ids: list[int]) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        for n, item_id in enumerate(item_ids):
            try:
                data = self._read_claimed(item_id)
            except BaseException:
                self._unclaim(item_ids[n + 1 :])
                raise
            if data is not None:
                out.append((item_id, data))
        return out

    def _read_claimed(self, item_id: int) -> bytes | None:
        """The bytes of one claimed item; None when it is gone or unreadable (then quarantined).
        Any other storage error hands the claim back and is raised."""
        with self._db_lock:
            if self._pq is None:  # closed meanwhile
                return None
            try:
                data = self._pq.read(item_id)
            except sqlite3.DatabaseError as exc:
                failure: sqlite3.DatabaseError | None = exc
            else:
                failure = None
        if failure is not None:
            if not db.is_corrupt(failure):
                self._unclaim([item_id])
                raise failure
            self._quarantine_unreadable_row(item_id, str(failure))
            return None
        if data is None:  # deleted behind our back: forget it
            with self._state_cv:
                self._forget_locked(item_id)
            return None
        return data

    def _to_item(self, item_id: int, data: bytes) -> QueueItem | None:
        """Decode a claimed item; quarantine it (and return None) if unreadable."""
        try:
            enqueued_at, events = _decode(data)
        except _Unreadable as exc:
            self._quarantine(item_id, data, str(exc))
            return None
        with self._state_cv:
            if item_id not in self._meta:  # written behind our back: count it now
                self._register_locked(item_id, _Meta(len(events), len(data), enqueued_at))
        return QueueItem(id=item_id, events=events, enqueued_at=enqueued_at, size_bytes=len(data))

    def ack(self, *item_ids: int) -> None:
        """Forget the items: their rows are deleted in one transaction (no acked rows pile up)."""
        if not item_ids:
            return
        with self._db_lock:
            self._require_storage().delete(*item_ids)
            with self._state_cv:
                for item_id in item_ids:
                    self._forget_locked(item_id)

    def release(self, item_id: int) -> None:
        """Hand a claimed item back; it is the next one out again (claims are in memory)."""
        with self._state_cv:
            if item_id not in self._claimed:
                log.warning("queue %s: release of unclaimed item %d ignored", self.name, item_id)
                return
            self._claimed.discard(item_id)
            heapq.heappush(self._ready, item_id)
            self._state_cv.notify()

    # ------------------------------------------------------------ quarantine

    def _quarantine(self, item_id: int, data: bytes, reason: str) -> None:
        """Move an unreadable item's bytes to quarantine/ and drop it."""
        try:
            path = self._write_quarantine_file(item_id, data)
        except OSError as exc:
            # Keep the item (claimed, so not handed out again until re-open)
            # rather than lose it.
            log.error(
                "queue %s: cannot quarantine unreadable item %d (%s): %s",
                self.name,
                item_id,
                reason,
                exc,
            )
            return
        with self._db_lock:
            self._require_storage().delete(item_id)
            with self._state_cv:
                self._forget_locked(item_id)
                self._quarantined += 1
        log.error("queue %s: unreadable item %d (%s) quarantined to %s", self.name, item_id, reason, path)

    def _quarantine_unreadable_row(self, item_id: int, reason: str) -> None:
        """An item whose row SQLite cannot read any more (its page went bad): never handed out again.

        Its id and the error go to quarantine/; the row is deleted if SQLite
        lets us (else the next start finds the damage and salvages around it).
        """
        path = self._keep_quarantined(item_id, reason.encode(), reason, suffix="unreadable")
        with self._db_lock:
            with contextlib.suppress(sqlite3.Error, RuntimeError):
                self._require_storage().delete(item_id)
            with self._state_cv:
                self._forget_locked(item_id)
                self._quarantined += 1
        log.error("queue %s: item %d cannot be read (%s); quarantined (%s)", self.name, item_id, reason, path)

    def _keep_quarantined(self, item_id: int, data: bytes, reason: str, *, suffix: str = "bin") -> Path | None:
        """Best effort: the bytes of an item set aside, in quarantine/ (None if that fails too)."""
        try:
            return self._write_quarantine_file(item_id, data, suffix=suffix)
        except OSError as exc:
            log.error("queue %s: cannot write item %d (%s) to quarantine/: %s", self.name, item_id, reason, exc)
            return None

    def _write_quarantine_file(self, item_id: int, data: bytes, *, suffix: str = "bin") -> Path:
        self.quarantine_dir.mkdir(exist_ok=True)
        path = self.quarantine_dir / f"{self.name}-{item_id}-{time.time_ns()}.{suffix}"
        with open(path, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(self.quarantine_dir)
        return path

    # ----------------------------------------------------------------- stats

    def stats(self) -> QueueStats:
        with self._state_cv:
            oldest = next(iter(self._meta.values()), None)
            return QueueStats(
                items=len(self._meta),
                events=self._events,
                bytes=self._bytes,
                oldest_age_s=max(0.0, self._clock.time() - oldest.enqueued_at) if oldest else 0.0,
                refusing=self._full or (self._disk_full and time.monotonic() < self._disk_retry_at),
                quarantined=self._quarantined,
                salvaged_events=self.salvaged_events,
                damaged_files=tuple(str(p) for p in self.damaged_files),
            )

    def _register_locked(self, item_id: int, meta: _Meta) -> None:
        if item_id not in self._meta:
            heapq.heappush(self._ready, item_id)
        self._meta[item_id] = meta
        self._events += meta.events
        self._bytes += meta.size

    def _forget_locked(self, item_id: int) -> None:
        self._claimed.discard(item_id)
        meta = self._meta.pop(item_id, None)
        if meta is None:
            return
        self._events -= meta.events
        self._bytes -= meta.size
        if self._full and self._bytes <= self.max_bytes * _RESUME_FRACTION:
            self._full = False
            log.warning(
                "queue %s: below %d bytes again; accepting data",
                self.name,
                int(self.max_bytes * _RESUME_FRACTION),
            )


def salvage_note(path: Path) -> Path:
    """Where the salvage of the damaged file ``path`` is recorded: a hidden file beside it."""
    return path.with_name(f".{path.name}.salvaged")


def _fsync_dir(path: Path) -> None:
    """Make a new directory entry durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["DurableQueue", "salvage_note"]
