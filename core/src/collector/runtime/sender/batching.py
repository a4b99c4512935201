"""Batching: queue items in, requests out (by count, by bytes, by period).

A queue item holds one committed batch, as a receiver sent it; a request holds
what the exporter should send at once.  The two rarely match, so the sender
spreads each item's events into a buffer and cuts requests of at most
``batch.max_events`` events and ``batch.max_bytes`` bytes, waiting at most
``batch.period`` for a request to fill (docs/delivery.md, "The sender").

Each buffered event keeps a :class:`Tracker` of the queue item it came from:
the item may be acknowledged only once every one of its events is finished
(delivered or dead-lettered), however they were spread over requests.

This module decides and holds; it does no I/O.  The period is measured with
the :class:`~collector.clock.Clock`, so tests decide when it has passed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import orjson

from collector.clock import Clock
from collector.components import BatchSettings, Event
from collector.runtime.queue import QueueItem

# Longest single wait on the queue, so an idle sender notices a stop promptly.
IDLE_POLL_S = 0.25


@dataclass
class Tracker:
    """Counts the unfinished events of one queue item; it is acked at zero."""

    item: QueueItem
    pending: int
    released: bool = False


@dataclass
class Pending:
    """One buffered event, its serialised size and the item it belongs to."""

    event: Event
    size: int
    tracker: Tracker


class Batcher:
    """The sender's buffer of events not yet in a request."""

    def __init__(self, settings: BatchSettings, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._buffer: deque[Pending] = deque()
        self._bytes = 0
        self._deadline: float | None = None  # clock.monotonic() when the period ends

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, item: QueueItem) -> Tracker:
        """Buffer ``item``'s events; returns the tracker that will ack it."""
        tracker = Tracker(item, len(item.events))
        if not item.events:
            return tracker
        if item.size_bytes <= self.settings.max_bytes:
            # The whole item fits in one request's byte budget, so the average
            # is as good as the exact size and saves serialising every event.
            size = item.size_bytes // len(item.events) + 1
            pendings = [Pending(event, size, tracker) for event in item.events]
        else:
            pendings = [Pending(event, len(orjson.dumps(event)), tracker) for event in item.events]
        if not self._buffer:
            self._deadline = self.clock.monotonic() + self.settings.period
        self._buffer.extend(pendings)
        self._bytes += sum(p.size for p in pendings)
        return tracker

    def full(self) -> bool:
        """A request could be cut now without waiting."""
        return len(self._buffer) >= self.settings.max_events or self._bytes >= self.settings.max_bytes

    def due(self) -> bool:
        """Full, or something is buffered and its period has passed."""
        if self.full():
            return True
        return self._deadline is not None and self.clock.monotonic() >= self._deadline

    def wait_s(self) -> float:
        """How long to wait on the queue before looking again.

        With nothing buffered, :data:`IDLE_POLL_S`; otherwise what is left of
        the period, at most :data:`IDLE_POLL_S`.
        """
        if self._deadline is None:
            return IDLE_POLL_S
        return max(0.0, min(IDLE_POLL_S, self._deadline - self.clock.monotonic()))

    def waited_out(self, waited: float) -> bool:
        """An empty wait of ``waited`` seconds covered the rest of the period.

        Then nothing more is coming within the period, so what is buffered
        goes now.  With the system clock this is the period passing; with a
        test's clock that does not move it still ends (a period within
        :data:`IDLE_POLL_S`), as "wait up to ``period`` for a batch to fill"
        promises.
        """
        return self._deadline is not None and waited >= self._deadline - self.clock.monotonic()

    def take(self) -> list[Pending]:
        """Cut one request: up to ``max_events`` events and ``max_bytes`` bytes.

        An event larger than ``max_bytes`` on its own still goes, alone.
        Whatever is left starts a new period.
        """
        out: list[Pending] = []
        size = 0
        limit_events, limit_bytes = self.settings.max_events, self.settings.max_bytes
        while self._buffer and len(out) < limit_events:
            nxt = self._buffer[0]
            if out and size + nxt.size > limit_bytes:
                break
            out.append(self._buffer.popleft())
            size += nxt.size
        self._bytes -= size
        self._deadline = self.clock.monotonic() + self.settings.period if self._buffer else None
        return out

    def clear(self) -> None:
        self._buffer.clear()
        self._bytes = 0
        self._deadline = None
