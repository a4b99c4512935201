"""Where the collector keeps things on disk: one object owns every name.

Everything the collector owes lives under ``storage.directory``
(docs/delivery.md, "The durable queue"; docs/dead-letters.md)::

    <root>/exporters/<id>/queue/                 an exporter's durable queue
    <root>/exporters/<id>/deadletter.sqlite      its dead letters
    <root>/processors/<id>/<pipeline>/           a processor, once per pipeline it is in
    <root>/processors/<id>/<pipeline>/deadletter.sqlite   its dead letters (on_error: dead_letter)
    <root>/receivers/<id>/                       a receiver (a pull receiver's state.sqlite)
    <root>/coordinators/<id>/                    the coordinator
    <root>/backfill/<receiver id>-<stamp>/       a backfill's own storage, laid out the same way
    <root>/workers/<n>/                          worker process n's shard (service.workers > 1), laid out the same way
    <root>/collector.lock                        held (flock) by the collector running on <root>

A ``/`` in an id becomes ``__`` (``openmeter/eu`` -> ``exporters/openmeter__eu``).
These names are what existing data directories hold, so they never change;
``core/tests/test_layout.py`` pins them.  Each component's directory is its
own: the files inside it (``dedupe.sqlite``, ``state.sqlite``, ...) are named
by the component.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEADLETTER_FILE = "deadletter.sqlite"
# Held with flock() by the one process that owns the storage (collector.runtime.storage_lock).
LOCK_FILE = "collector.lock"
QUEUE_DIR = "queue"
WORKERS_DIR = "workers"
# What the pull-receiver framework names its watermark store in its directory
# (collector/pull.py); the layout repeats it so that tools can find it.
PULL_STATE_FILE = "state.sqlite"

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def dir_name(component_id: str) -> str:
    """A component id as a directory name (``openmeter/eu`` -> ``openmeter__eu``)."""
    return _UNSAFE.sub("_", component_id.replace("/", "__"))


def deadletters_in(component_dir: Path) -> Path:
    """The dead-letter store of the component that owns ``component_dir``."""
    return component_dir / DEADLETTER_FILE


@dataclass(frozen=True)
class StorageLayout:
    """The directory names under one storage root; building a path does no I/O."""

    root: Path

    @property
    def lock_file(self) -> Path:
        """The file a running collector (or ``collector queue drain``) holds locked, with its PID."""
        return self.root / LOCK_FILE

    # -- per component -------------------------------------------------------------

    def component_dir(self, kind: str, component_id: str, pipeline: str | None = None) -> Path:
        """The private directory of a component (``ComponentContext.storage_dir``).

        Processors keep one directory per pipeline they are in, since the same
        processor id in two pipelines holds separate state.
        """
        if kind == "processor":
            if pipeline is None:
                raise ValueError("a processor's directory depends on its pipeline")
            return self.processor_dir(component_id, pipeline)
        return self.root / f"{kind}s" / dir_name(component_id)

    def receiver_dir(self, receiver_id: str) -> Path:
        return self.component_dir("receiver", receiver_id)

    def coordinator_dir(self, coordinator_id: str) -> Path:
        return self.component_dir("coordinator", coordinator_id)

    def exporter_dir(self, exporter_id: str) -> Path:
        return self.component_dir("exporter", exporter_id)

    def processor_dir(self, processor_id: str, pipeline: str) -> Path:
        return self.root / "processors" / dir_name(processor_id) / pipeline

    # -- what the runtime keeps in them ----------------------------------------------

    def exporter_queue(self, exporter_id: str) -> Path:
        """The durable queue's directory (the queue names the files inside)."""
        return self.exporter_dir(exporter_id) / QUEUE_DIR

    def exporter_deadletters(self, exporter_id: str) -> Path:
        return deadletters_in(self.exporter_dir(exporter_id))

    def processor_deadletters(self, processor_id: str, pipeline: str) -> Path:
        return deadletters_in(self.processor_dir(processor_id, pipeline))

    def pull_state(self, receiver_id: str) -> Path:
        """The state store where a pull receiver keeps its watermark."""
        return self.receiver_dir(receiver_id) / PULL_STATE_FILE

    # -- other layouts -------------------------------------------------------------------

    def for_backfill(self, receiver_id: str, stamp: str) -> StorageLayout:
        """A backfill's own storage, so a collector running on this root is not disturbed."""
        return StorageLayout(self.root / "backfill" / f"{dir_name(receiver_id)}-{stamp}")

    def for_worker(self, index: int) -> StorageLayout:
        """Worker process ``index``'s shard: its own queues and dead letters (docs/operations.md, Worker processes)."""
        if index < 1:
            raise ValueError("worker indexes start at 1")
        return StorageLayout(self.root / WORKERS_DIR / str(index))

    # -- what exists -----------------------------------------------------------------------

    def worker_shards(self) -> dict[int, StorageLayout]:
        """Every worker shard on disk, by index (shards outlive a smaller ``workers`` setting)."""
        base = self.root / WORKERS_DIR
        if not base.is_dir():
            return {}
        found = {int(d.name): StorageLayout(d) for d in base.iterdir() if d.is_dir() and d.name.isdigit()}
        return dict(sorted(found.items()))

    def exporter_queues(self) -> dict[str, Path]:
        """Every exporter queue on disk, by directory name (``openmeter__eu``)."""
        base = self.root / "exporters"
        if not base.is_dir():
            return {}
        return {d.name: d / QUEUE_DIR for d in sorted(base.iterdir()) if (d / QUEUE_DIR).is_dir()}

    def exporter_dirs(self) -> dict[str, Path]:
        """Every exporter directory on disk (its queue, its dead letters), by directory name."""
        base = self.root / "exporters"
        if not base.is_dir():
            return {}
        return {d.name: d for d in sorted(base.iterdir()) if d.is_dir()}

    def unowned_exporter_dirs(self, exporter_ids: Iterable[str]) -> dict[str, Path]:
        """Exporter directories that none of ``exporter_ids`` owns (a removed or renamed exporter's)."""
        owned = {dir_name(eid) for eid in exporter_ids}
        return {name: path for name, path in self.exporter_dirs().items() if name not in owned}

    def unowned_queues(self, exporter_ids: Iterable[str]) -> dict[str, Path]:
        """Queues on disk that none of ``exporter_ids`` owns (left by a removed or renamed exporter)."""
        owned = {dir_name(eid) for eid in exporter_ids}
        return {name: path for name, path in self.exporter_queues().items() if name not in owned}

    def backfills(self) -> list[Path]:
        """Backfill storages left on disk (each may still hold undelivered events)."""
        base = self.root / "backfill"
        return sorted(d for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
