"""A volatile queue with the durable queue's interface, for tests and demos."""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from typing import Any

import orjson

from collector.clock import Clock, SystemClock
from collector.errors import BackpressureError
from collector.events import encoding_of
from collector.runtime.queue import QueueItem, QueueStats


class MemoryQueue:
    """Everything in RAM: lost on exit.  Enforces ``max_bytes`` like the durable one."""

    def __init__(self, *, max_bytes: int = 64 * 1024 * 1024, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or SystemClock()  # stamps commits; max_age is measured from them
        self.max_bytes = max_bytes
        self._ids = itertools.count(1)
        self._ready: OrderedDict[int, QueueItem] = OrderedDict()
        self._claimed: dict[int, QueueItem] = {}
        self._bytes = 0
        self._events = 0
        self._cond = threading.Condition()

    def open(self) -> None:
        pass

    async def put(self, events: list[dict[str, Any]]) -> None:
        encoded = encoding_of(events)
        size = len(encoded) + 2 if encoded is not None else len(orjson.dumps(events))
        with self._cond:
            if self._bytes + size > self.max_bytes and (self._ready or self._claimed):
                raise BackpressureError(f"queue is full ({self._bytes} of {self.max_bytes} bytes)", retry_after=1.0)
            item = QueueItem(next(self._ids), list(events), self._clock.time(), size)
            self._ready[item.id] = item
            self._bytes += size
            self._events += len(events)
            self._cond.notify()

    def check_intake(self) -> None:
        with self._cond:
            if self._bytes >= self.max_bytes:
                raise BackpressureError(f"queue is full ({self._bytes} of {self.max_bytes} bytes)", retry_after=1.0)

    def get(self, timeout: float) -> QueueItem | None:
        items = self.get_many(timeout, 1)
        return items[0] if items else None

    def get_many(self, timeout: float, max_events: int) -> list[QueueItem]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._ready:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self._cond.wait(left)
            items: list[QueueItem] = []
            total = 0
            while self._ready:
                item = next(iter(self._ready.values()))
                if items and total + len(item.events) > max_events:
                    break
                self._ready.popitem(last=False)
                self._claimed[item.id] = item
                items.append(item)
                total += len(item.events)
            return items

    def ack(self, *item_ids: int) -> None:
        with self._cond:
            for item_id in item_ids:
                item = self._claimed.pop(item_id, None)
                if item is not None:
                    self._bytes -= item.size_bytes
                    self._events -= len(item.events)

    def release(self, item_id: int) -> None:
        with self._cond:
            item = self._claimed.pop(item_id, None)
            if item is not None:
                self._ready[item.id] = item
                self._ready.move_to_end(item.id, last=False)
                self._cond.notify()

    def stats(self) -> QueueStats:
        with self._cond:
            items = list(self._ready.values()) + list(self._claimed.values())
            oldest = min((i.enqueued_at for i in items), default=None)
            return QueueStats(
                items=len(items),
                events=self._events,
                bytes=self._bytes,
                oldest_age_s=max(0.0, self._clock.time() - oldest) if oldest else 0.0,
                refusing=self._bytes >= self.max_bytes,
            )

    def close(self) -> None:
        pass
