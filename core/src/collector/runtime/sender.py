"""The sender: drains an exporter's queue, batches, retries, splits and dead-letters.

Each exporter gets an :class:`ExporterRunner`: its queue, its dead-letter
store, and a sender that runs on **its own thread and event loop**.  Intake
(receivers, on the service loop) and delivery never starve each other: a
prototype with the sender on the receivers' loop delivered 2-3k events/s while
ingest ran at 60k/s; on its own thread it kept pace (DESIGN.md section 6).

Status classes (DESIGN.md section 7), as raised by the exporter:

* returns normally           delivered; the queue item is acknowledged once all
                             of its events are finished;
* RetryableError, timeout,   retried with full-jitter exponential backoff (base
  unexpected exception       ``retry.initial_interval``, cap ``retry.max_interval``),
                             never sooner than the far side's ``retry_after``;
* PermanentError             the batch is split in halves until the rejected
                             events are isolated; those go to the dead letters
                             with the far side's status and problem body, the
                             rest are delivered;
* AuthError                  the exporter pauses (``/ready`` false), keeps the
                             data and retries every ``retry.auth_interval``;
* queue age > max_age        dead-lettered with reason ``max_age``.

Nothing is ever dropped by the sender.  On shutdown, unfinished queue items are
released (memory queue) or simply left unacknowledged (durable queue), so they
are sent again after a restart: at-least-once, with duplicates bounded by what
was in flight.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from collector.components import Event, Exporter, ExporterConfig
from collector.runtime.deadletters import DeadLetterStore
from collector.errors import AuthError, BackpressureError, PermanentError, RetryableError
from collector.runtime.queue import BatchQueue, QueueItem
from collector.telemetry import Metrics

log = logging.getLogger("collector.runtime.sender")

T = TypeVar("T")


def full_jitter(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """AWS-style full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * (2 ** min(attempt, 32)))
    return (rng or random).uniform(0, ceiling)


@dataclass
class _Tracker:
    """Counts the unfinished events of one queue item; acks it at zero."""

    item: QueueItem
    pending: int
    released: bool = False


@dataclass
class _Pending:
    event: Event
    size: int
    tracker: _Tracker


@dataclass
class SenderStats:
    paused: bool = False
    paused_reason: str | None = None
    last_error: str | None = None
    in_flight_events: int = 0
    consecutive_failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class ExporterRunner:
    """One exporter with its queue, dead letters and sender thread."""

    def __init__(
        self,
        exporter_id: str,
        exporter: Exporter[Any],
        config: ExporterConfig,
        queue: BatchQueue,
        deadletters: DeadLetterStore,
        metrics: Metrics,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.id = exporter_id
        self.exporter = exporter
        self.config = config
        self.queue = queue
        self.deadletters = deadletters
        self.metrics = metrics
        self.stats = SenderStats()
        self._rng = rng or random.Random()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._sender: asyncio.Task[None] | None = None
        self._stopping = False
        self._buffer: deque[_Pending] = deque()
        self._trackers: dict[int, _Tracker] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        self._io = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"queue-{exporter_id}")
        self._labels = {"exporter": exporter_id}
        self._enqueued = metrics.enqueued.labels(**self._labels)
        self._buffer_batch_received = metrics.buffer_batch_received.labels(**self._labels)
        self._dl_counted_at = -1e9

    # -- service side (called on the service loop) ------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.queue.open)
        self._refresh_gauges()
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name=f"sender-{self.id}", daemon=True)
        self._thread.start()
        await asyncio.to_thread(ready.wait)
        await self._call(self._start_in_loop())

    async def enqueue(self, events: list[Event]) -> None:
        """Commit ``events`` to this exporter's queue (returns after the commit)."""
        await self.queue.put(events)
        self._enqueued.inc(len(events))
        self._buffer_batch_received.inc()

    def check_capacity(self) -> None:
        """Raise BackpressureError now if the queue would refuse, before any queue commits."""
        try:
            self.queue.check_intake()
        except BackpressureError as exc:
            raise BackpressureError(f"exporter {self.id}: {exc.message}", retry_after=exc.retry_after) from None

    async def shutdown(self, timeout: float) -> None:
        if self._loop is None:
            return
        try:
            await self._call(self._stop_in_loop(timeout))
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join, 5.0)
            self._io.shutdown(wait=True)
            await asyncio.to_thread(self.queue.close)
            await asyncio.to_thread(self.deadletters.close)
            self._loop = None

    def health(self) -> dict[str, Any]:
        st = self.queue.stats()
        self._refresh_gauges(st)
        out = self.exporter.health()
        out.update(
            {
                "ready": out.get("ready", False) and not self.stats.paused and not st.refusing,
                "paused": self.stats.paused,
                "queue": {
                    "items": st.items,
                    "events": st.events,
                    "bytes": st.bytes,
                    "oldest_age_s": round(st.oldest_age_s, 3),
                    "refusing": st.refusing,
                    "quarantined": st.quarantined,
                },
                "in_flight_events": self.stats.in_flight_events,
            }
        )
        if self.stats.paused_reason:
            out["paused_reason"] = self.stats.paused_reason
        if self.stats.last_error:
            out["last_error"] = self.stats.last_error
        return out

    def _refresh_gauges(self, st: Any = None) -> None:
        st = st or self.queue.stats()
        m, lb = self.metrics, self._labels
        # Events already delivered or dead-lettered whose queue item still
        # waits for its other events are counted there, not here, so that
        # enqueued = delivered + dead-lettered + queued holds at every moment.
        finished = sum(len(t.item.events) - t.pending for t in list(self._trackers.values()))
        m.queue_events.labels(**lb).set(max(0, st.events - finished))
        m.queue_bytes.labels(**lb).set(st.bytes)
        m.queue_oldest.labels(**lb).set(st.oldest_age_s)
        m.queue_refusing.labels(**lb).set(1 if st.refusing else 0)
        m.queue_quarantined.labels(**lb).set(st.quarantined)
        m.in_flight.labels(**lb).set(self.stats.in_flight_events)
        m.exporter_paused.labels(**lb).set(1 if self.stats.paused else 0)
        now = time.monotonic()
        if now - self._dl_counted_at > 5.0:  # a COUNT(*) at most every 5 s; the CLI may change the store too
            self._dl_counted_at = now
            try:
                m.dead_letter_events.labels(**lb).set(self.deadletters.count())
            except Exception:  # a closed or busy store: keep the last value
                pass

    async def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # -- sender side (on the runner's own loop) ---------------------------------

    async def _start_in_loop(self) -> None:
        self._wake = asyncio.Event()
        await self.exporter.start()
        self._sender = asyncio.create_task(self._run(), name=f"sender-{self.id}")

    async def _stop_in_loop(self, timeout: float) -> None:
        self._stopping = True
        if self._wake:
            self._wake.set()
        deadline = time.monotonic() + timeout
        if self._sender is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._sender), max(0.1, timeout))
            except TimeoutError:
                self._sender.cancel()
        left = max(0.1, deadline - time.monotonic())
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=left)
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "exporter %s: %d request(s) still running after the %.1fs drain timeout; "
                    "their events stay queued and are sent after restart",
                    self.id,
                    len(pending),
                    timeout,
                    extra={"exporter": self.id},
                )
                await asyncio.gather(*pending, return_exceptions=True)
        # Whatever is unfinished goes back to the queue, to be sent next time.
        for tracker in list(self._trackers.values()):
            if tracker.pending > 0 and not tracker.released:
                tracker.released = True
                await self._io_call(self.queue.release, tracker.item.id)
        self._trackers.clear()
        self._buffer.clear()
        self.stats.in_flight_events = 0
        await self.exporter.shutdown(max(0.1, deadline - time.monotonic()))
        self._refresh_gauges()

    async def _io_call(self, fn: Any, *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, fn, *args)

    async def _run(self) -> None:
        sem = asyncio.Semaphore(self.config.max_in_flight)
        last_gauges = 0.0
        while not self._stopping:
            await sem.acquire()
            try:
                batch = await self._next_batch()
            except Exception:
                sem.release()
                log.exception("exporter %s: reading the queue failed; retrying", self.id)
                await asyncio.sleep(1.0)
                continue
            now = time.monotonic()
            if now - last_gauges > 1.0:
                self._refresh_gauges()
                last_gauges = now
            if not batch:
                sem.release()
                continue
            self.metrics.batch_created.labels(**self._labels).inc()
            task = asyncio.create_task(self._deliver(batch))
            self._tasks.add(task)

            def done(t: asyncio.Task[None]) -> None:
                self._tasks.discard(t)
                sem.release()
                if not t.cancelled() and t.exception() is not None:
                    log.error("exporter %s: sender task failed: %r", self.id, t.exception())

            task.add_done_callback(done)

    async def _fill(self, timeout: float) -> bool:
        """Move one queue item into the local buffer; False when none came."""
        item: QueueItem | None = await self._io_call(self.queue.get, timeout)
        if item is None:
            return False
        self.metrics.buffer_batch_sent.labels(**self._labels).inc()
        self.metrics.buffer_latency_ns.labels(**self._labels).observe(max(0.0, time.time() - item.enqueued_at) * 1e9)
        if not item.events:  # nothing to send: finished already
            await self._io_call(self.queue.ack, item.id)
            return True
        tracker = _Tracker(item, len(item.events))
        self._trackers[item.id] = tracker
        if item.size_bytes <= self.config.batch.max_bytes:
            # The whole item fits in one request's byte budget, so the average
            # is as good as the exact size and saves serialising every event.
            size = item.size_bytes // len(item.events) + 1
            self._buffer.extend(_Pending(event, size, tracker) for event in item.events)
        else:
            self._buffer.extend(_Pending(event, len(orjson.dumps(event)), tracker) for event in item.events)
        self.stats.in_flight_events += len(item.events)
        return True

    async def _next_batch(self) -> list[_Pending]:
        """Up to max_events / max_bytes, waiting at most ``batch.period`` to fill."""
        cfg = self.config.batch
        deadline: float | None = None
        while not self._stopping:
            have = len(self._buffer)
            size = sum(p.size for p in self._buffer) if have < cfg.max_events else 0
            if have >= cfg.max_events or size >= cfg.max_bytes:
                break
            if have and deadline is None:
                deadline = time.monotonic() + cfg.period
            wait = 0.25 if deadline is None else max(0.0, min(0.25, deadline - time.monotonic()))
            got = await self._fill(wait)
            if not got and deadline is not None and time.monotonic() >= deadline:
                break
        out: list[_Pending] = []
        size = 0
        while self._buffer and len(out) < cfg.max_events:
            nxt = self._buffer[0]
            if out and size + nxt.size > cfg.max_bytes:
                break
            out.append(self._buffer.popleft())
            size += nxt.size
        return out

    async def _finish(self, pairs: list[_Pending]) -> None:
        done: list[int] = []
        for p in pairs:
            p.tracker.pending -= 1
            if p.tracker.pending == 0 and not p.tracker.released:
                done.append(p.tracker.item.id)
        self.stats.in_flight_events -= len(pairs)
        for item_id in done:
            self._trackers.pop(item_id, None)
            await self._ack(item_id)

    async def _ack(self, item_id: int) -> None:
        """Acknowledge, retrying storage errors (a full disk): an unacknowledged
        item would be sent again after a restart, never lost."""
        delay = 0.1
        while True:
            try:
                await self._io_call(self.queue.ack, item_id)
                return
            except Exception as exc:
                if self._stopping:
                    log.warning(
                        "exporter %s: ack of queue item %d failed at shutdown (%s); it will be "
                        "sent again after restart",
                        self.id,
                        item_id,
                        exc,
                    )
                    return
                log.warning("exporter %s: ack of queue item %d failed (%s); retrying", self.id, item_id, exc)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _dead_letter(self, pairs: list[_Pending], reason: str, status: int | None, body: str | None) -> None:
        delay = 0.1
        while True:  # a full disk must not lose them: retry until stored (shutdown leaves them queued)
            try:
                await self._io_call(
                    lambda: self.deadletters.add([p.event for p in pairs], reason, status=status, body=body)
                )
                break
            except Exception as exc:
                if self._stopping:
                    log.warning("exporter %s: dead-lettering failed at shutdown (%s); the events stay queued",
                                self.id, exc)  # fmt: skip
                    return
                log.warning("exporter %s: dead-lettering %d event(s) failed (%s); retrying", self.id, len(pairs), exc)
                await self._sleep(delay)
                delay = min(delay * 2, 5.0)
        self.metrics.dead_lettered.labels(exporter=self.id, reason=reason).inc(len(pairs))
        log.warning(
            "exporter %s: %d event(s) dead-lettered (%s%s)",
            self.id,
            len(pairs),
            reason,
            f", status {status}" if status else "",
            extra={"exporter": self.id, "ids": [p.event.get("id") for p in pairs[:10]]},
        )
        await self._finish(pairs)

    async def _expire(self, batch: list[_Pending]) -> list[_Pending]:
        limit = time.time() - self.config.queue.max_age
        old = [p for p in batch if p.tracker.item.enqueued_at < limit]
        if not old:
            return batch
        await self._dead_letter(old, "max_age", None, f"undelivered after {self.config.queue.max_age:.0f}s")
        return [p for p in batch if p.tracker.item.enqueued_at >= limit]

    async def _deliver(self, batch: list[_Pending]) -> None:
        attempt = 0
        while batch:
            batch = await self._expire(batch)
            if not batch:
                return
            if self._stopping and attempt > 0:
                return  # leave it queued; shutdown releases it
            started = time.monotonic()
            try:
                await asyncio.wait_for(self.exporter.export([p.event for p in batch]), self.config.timeout)
            except PermanentError as exc:
                self._observe(started, "rejected")
                if len(batch) == 1:
                    await self._dead_letter(batch, "rejected", exc.status, exc.body or exc.message)
                    self._recovered()
                    return
                mid = len(batch) // 2
                await asyncio.gather(self._deliver(batch[:mid]), self._deliver(batch[mid:]))
                return
            except AuthError as exc:
                self._observe(started, "auth")
                reason = exc.message
                if exc.status is not None and str(exc.status) not in reason:
                    reason = f"HTTP {exc.status}: {reason}"
                self._pause(reason)
                self.metrics.retries.labels(exporter=self.id, **{"class": "auth"}).inc()
                attempt += 1
                await self._sleep(self.config.retry.auth_interval)
                continue
            except (RetryableError, TimeoutError, OSError, Exception) as exc:
                klass, retry_after = self._classify(exc)
                self._observe(started, klass)
                self.metrics.retries.labels(exporter=self.id, **{"class": klass}).inc()
                self.stats.consecutive_failures += 1
                self.stats.last_error = f"{klass}: {exc}"[:500]
                delay = full_jitter(
                    attempt, self.config.retry.initial_interval, self.config.retry.max_interval, self._rng
                )
                if retry_after is not None:
                    delay = max(delay, min(retry_after, 3600.0))
                if klass == "error":
                    log.error("exporter %s: unexpected export failure; will retry", self.id, exc_info=exc)
                elif self.stats.consecutive_failures in (1, 10) or self.stats.consecutive_failures % 100 == 0:
                    log.warning(
                        "exporter %s: send failed (%s: %s); retrying in %.2fs",
                        self.id,
                        klass,
                        exc,
                        delay,
                        extra={"exporter": self.id},
                    )
                attempt += 1
                await self._sleep(delay)
                continue
            self._observe(started, "delivered")
            self.metrics.batch_sent.labels(**self._labels).inc()
            self.metrics.delivered.labels(**self._labels).inc(len(batch))
            self._recovered()
            await self._finish(batch)
            return

    def _classify(self, exc: BaseException) -> tuple[str, float | None]:
        if isinstance(exc, RetryableError):
            return getattr(exc, "klass", None) or "retryable", exc.retry_after
        if isinstance(exc, TimeoutError):
            return "timeout", None
        if isinstance(exc, OSError):
            return "network", None
        return "error", None

    def _observe(self, started: float, outcome: str) -> None:
        self.metrics.send_latency.labels(exporter=self.id, outcome=outcome).observe(time.monotonic() - started)

    def _pause(self, reason: str) -> None:
        if not self.stats.paused:
            log.error(
                "exporter %s paused: the destination refused our credentials (%s); data is kept and "
                "retried every %.0fs",
                self.id,
                reason,
                self.config.retry.auth_interval,
                extra={"exporter": self.id},
            )
        self.stats.paused = True
        self.stats.paused_reason = reason
        self.metrics.exporter_paused.labels(**self._labels).set(1)

    def _recovered(self) -> None:
        if self.stats.paused:
            log.info("exporter %s resumed: credentials accepted again", self.id, extra={"exporter": self.id})
        self.stats.paused = False
        self.stats.paused_reason = None
        self.stats.consecutive_failures = 0
        self.metrics.exporter_paused.labels(**self._labels).set(0)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, but wake early on shutdown so a drain is not held up by backoff."""
        assert self._wake is not None
        if self._stopping:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
