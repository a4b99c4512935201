"""Queues between a pipeline and an exporter's sender.

One queue per exporter.  Producers (receivers, on their event loop) call the
async :meth:`BatchQueue.put`, which returns only once the events are committed;
the sender, in its own thread, takes items with the blocking :meth:`get_many` and
acknowledges them by id once every event in them is delivered or dead-lettered.

Implementations:

* :class:`collector.runtime.queue.memory.MemoryQueue`: volatile, for tests and demos;
* :class:`collector.runtime.queue.sqlite.DurableQueue`: persist-queue (SQLite, WAL),
  group commit, ``synchronous=FULL``; the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class QueueItem:
    """One committed batch, as stored: what the sender works on."""

    id: int
    events: list[dict[str, Any]]
    enqueued_at: float  # wall-clock seconds (the queue's Clock.time()) of the commit
    size_bytes: int


@dataclass(frozen=True)
class QueueStats:
    """What the admin endpoints and the gauges report."""

    items: int  # queue items not yet acknowledged (ready + being sent)
    events: int  # events in those items
    bytes: int  # serialised size of those items
    oldest_age_s: float  # age of the oldest unacknowledged item; 0 when empty
    refusing: bool  # True while new data is refused (full, disk full)
    quarantined: int = 0  # unreadable items moved aside since start (salvage included)
    salvaged_events: int = 0  # events salvaged from damaged queue files since start
    damaged_files: tuple[str, ...] = ()  # those damaged files, kept beside the queue


@runtime_checkable
class BatchQueue(Protocol):
    """The interface the service and the sender rely on."""

    def open(self) -> None:
        """Prepare storage (blocking; called in a worker thread)."""

    async def put(self, events: list[dict[str, Any]]) -> None:
        """Commit ``events``; return only when they are durable.

        Raises :class:`collector.errors.BackpressureError` when the queue
        refuses new data; nothing already accepted is affected.
        """

    def check_intake(self) -> None:
        """Raise BackpressureError now if a put would be refused (checked before
        any queue of a fan-out commits)."""

    def get(self, timeout: float) -> QueueItem | None:
        """Block up to ``timeout`` seconds for the next unclaimed item."""

    def get_many(self, timeout: float, max_events: int) -> list[QueueItem]:
        """Block up to ``timeout`` seconds for the next unclaimed items: the oldest that fit in
        ``max_events`` events together, at least one ([] when none came)."""

    def ack(self, *item_ids: int) -> None:
        """These items are finished (delivered or dead-lettered): forget them, at once (one transaction)."""

    def release(self, item_id: int) -> None:
        """Give a claimed item back, to be handed out again (shutdown)."""

    def stats(self) -> QueueStats: ...

    def close(self) -> None:
        """Flush and release storage (blocking)."""
