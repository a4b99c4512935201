"""What an exporter directory holds, read without changing it; and which ones nobody owns.

An exporter's queue and dead letters live in ``exporters/<id>/``
(:class:`~collector.runtime.layout.StorageLayout`).  Rename or remove the
exporter in the configuration and that directory is left behind with
whatever it held: nothing delivers it.  The service looks for such
directories at start and reports them (a warning, ``/health`` ``orphaned``,
``collector_orphaned_queue_events``); ``collector queue list`` shows every
directory and ``collector queue drain OLD --to NEW`` moves one into a
configured exporter (docs/operations.md, "Renamed or removed exporters").

Counting opens the SQLite files read-only (``mode=ro``), so it may run beside
a collector that writes them, and never creates, migrates or moves anything.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector.runtime.layout import DEADLETTER_FILE, QUEUE_DIR, StorageLayout
from collector.runtime.queue.sqlite import read_header
from collector.runtime.queue.storage import HEADER_BYTES, QueueTable

#: The durable queue's database in its directory (DurableQueue's default name, which the service uses).
QUEUE_NAME = "queue"


@dataclass(frozen=True)
class ExporterContents:
    """One ``exporters/<name>/`` directory: its queue and dead letters."""

    name: str  # the directory name (``openmeter__eu`` for ``openmeter/eu``)
    path: Path
    queue_items: int = 0
    queue_events: int = 0
    dead_letters: int = 0
    error: str | None = None  # a file that could not be read (damaged, locked...)

    @property
    def empty(self) -> bool:
        return self.error is None and self.queue_items == 0 and self.dead_letters == 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": str(self.path),
            "queue_items": self.queue_items,
            "queue_events": self.queue_events,
            "dead_letters": self.dead_letters,
        }
        if self.error:
            out["error"] = self.error
        return out


def _read_only(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5.0)
    conn.execute("PRAGMA query_only = 1")
    return conn


def queue_contents(queue_dir: Path) -> tuple[int, int]:
    """(items, events) not yet acknowledged in the durable queue in ``queue_dir`` (0, 0 if none).

    Reads only the header of each item, as the queue does at open.
    """
    db = queue_dir / f"{QUEUE_NAME}.db"
    if not db.is_file():
        return 0, 0
    table = QueueTable.table_for(QUEUE_NAME)
    conn = _read_only(db)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (table.strip("`"),)).fetchone():
            return 0, 0
        items = events = 0
        for prefix, status in conn.execute(f"SELECT substr(data, 1, {HEADER_BYTES}), status FROM {table}"):
            if not QueueTable.readable(status):
                continue
            items += 1
            header = read_header(bytes(prefix or b""))
            events += header[1] if header else 0
        return items, events
    finally:
        conn.close()


def dead_letter_count(path: Path) -> int:
    """Entries in the dead-letter store at ``path`` (0 if there is none)."""
    if not path.is_file():
        return 0
    conn = _read_only(path)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'dead_letters'").fetchone():
            return 0
        return int(conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
    finally:
        conn.close()


def exporter_contents(name: str, path: Path) -> ExporterContents:
    """What ``exporters/<name>/`` holds; a file that cannot be read is reported, not raised."""
    try:
        items, events = queue_contents(path / QUEUE_DIR)
        dead = dead_letter_count(path / DEADLETTER_FILE)
    except (sqlite3.Error, OSError) as exc:
        return ExporterContents(name, path, error=str(exc))
    return ExporterContents(name, path, items, events, dead)


def find_orphans(layout: StorageLayout, exporter_ids: Iterable[str]) -> list[ExporterContents]:
    """Exporter directories that none of ``exporter_ids`` owns and that still hold something."""
    found = (exporter_contents(name, path) for name, path in layout.unowned_exporter_dirs(exporter_ids).items())
    return [c for c in found if not c.empty]
