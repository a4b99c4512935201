"""ExporterRunner: one exporter with its queue, dead letters and sender.

It composes the sender's pieces (docs/delivery.md, "The sender"):
:mod:`~collector.runtime.sender.host` runs it on its own thread and loop,
:mod:`~collector.runtime.sender.batching` cuts requests from queue items,
:mod:`~collector.runtime.sender.retry` sends each request until it is finished.
What stays here is the queue's side: taking items, acknowledging an item once
all of its events are finished, releasing the unfinished ones at a stop, and
the gauges, which a scrape reads from memory.

Nothing is ever dropped by the sender.  On shutdown, unfinished queue items
are released (memory queue) or simply left unacknowledged (durable queue), so
they are sent again after a restart: at-least-once, with duplicates bounded by
what was in flight.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from collector.clock import Clock, SystemClock
from collector.components import Event, Exporter, ExporterConfig
from collector.errors import BackpressureError
from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.queue import BatchQueue, QueueItem
from collector.runtime.sender.batching import Batcher, Pending, Tracker
from collector.runtime.sender.host import LoopHost
from collector.runtime.sender.retry import Delivery, SenderStats, until_stored
from collector.telemetry import REDACTOR, ExporterGauges, Metrics, hot_inc

log = logging.getLogger("collector.runtime.sender")
T = TypeVar("T")

# The CLI (`collector dlq`) may change the dead-letter store from another
# process, so the in-memory count is set from the store this often.
DEAD_LETTER_RECOUNT_S = 5.0
# A sender whose storage writes (dead letters, acks) have failed without a
# break for this long (by the Clock) is stuck: /health and /ready say so.
STUCK_AFTER_S = 30.0


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
        clock: Clock | None = None,
    ) -> None:
        self.id = exporter_id
        self.exporter = exporter
        self.config = config
        self.queue = queue
        self.deadletters = deadletters
        self.metrics = metrics
        self.clock: Clock = clock or SystemClock()
        self.stats = SenderStats()
        self.host = LoopHost(exporter_id)
        #: storage writes failing without a break past this many seconds make the exporter not ready
        self.stuck_after_s = STUCK_AFTER_S
        # what ("dead-letter writes", "acks") -> (Clock.monotonic() of the first failure, the last error)
        self._failing: dict[str, tuple[float, str]] = {}
        self._failing_lock = threading.Lock()
        self.batcher = Batcher(config.batch, self.clock)
        self.delivery = Delivery(
            exporter_id,
            # Looked up per call: a test may replace the exporter's method after start.
            lambda events: self.exporter.export(events),
            retry=config.retry,
            timeout=config.timeout,
            max_age=config.queue.max_age,
            deadletters=deadletters,
            metrics=metrics,
            stats=self.stats,
            clock=self.clock,
            run_io=lambda fn, *args: self._write_io("dead-letter writes", fn, *args),
            finish=self._finish,
            sleep=self._sleep,
            stopping=lambda: self._stopping,
            rng=rng or random.Random(),
        )
        self._sender: asyncio.Task[None] | None = None
        self._recounter: asyncio.Task[None] | None = None
        self._stopping = False
        self._trackers: dict[int, Tracker] = {}
        # Events finished (delivered or dead-lettered) whose queue item still
        # waits for its other events: the queue counts them, the gauge must not.
        self._finished_unacked = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake: asyncio.Event | None = None
        self._labels = {"exporter": exporter_id}
        self._enqueued = metrics.enqueued.labels(**self._labels)
        self._buffer_batch_received = metrics.buffer_batch_received.labels(**self._labels)
        self._buffer_batch_sent = metrics.buffer_batch_sent.labels(**self._labels)
        self._buffer_latency = metrics.buffer_latency_ns.labels(**self._labels)
        self._batch_created = metrics.batch_created.labels(**self._labels)
        self._enqueued_inc = hot_inc(self._enqueued)  # per request: see hot_inc
        self._buffer_batch_received_inc = hot_inc(self._buffer_batch_received)

    # -- service side (called on the service loop) ------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.queue.open)
        await asyncio.to_thread(self._recount_dead_letters)
        # Read at scrape time from here until shutdown (several sources per exporter add up).
        self.metrics.exporter_gauges.watch(self.id, self.gauges)
        await self.host.start()
        await self.host.call(self._start_in_loop())

    async def enqueue(self, events: list[Event]) -> None:
        """Commit ``events`` to this exporter's queue (returns after the commit)."""
        await self.queue.put(events)
        self._enqueued_inc(len(events))
        self._buffer_batch_received_inc(1)

    def check_capacity(self) -> None:
        """Raise BackpressureError now if the queue would refuse, before any queue commits."""
        try:
            self.queue.check_intake()
        except BackpressureError as exc:
            raise BackpressureError(f"exporter {self.id}: {exc.message}", retry_after=exc.retry_after) from None

    async def shutdown(self, timeout: float) -> None:
        if not self.host.running:
            return
        try:
            await self.host.call(self._stop_in_loop(timeout))
        finally:
            self.metrics.exporter_gauges.unwatch(self.id, self.gauges)
            await self.host.stop()
            await asyncio.to_thread(self.queue.close)
            await asyncio.to_thread(self.deadletters.close)

    def health(self) -> dict[str, Any]:
        st = self.queue.stats()
        stuck = self.stuck_reason()
        out = self.exporter.health()
        out.update(
            {
                "ready": out.get("ready", False) and not self.stats.paused and not st.refusing and stuck is None,
                "paused": self.stats.paused,
                "queue": {
                    "items": st.items,
                    "events": st.events,
                    "bytes": st.bytes,
                    "oldest_age_s": round(st.oldest_age_s, 3),
                    "refusing": st.refusing,
                    "quarantined": st.quarantined,
                    "salvaged_events": st.salvaged_events,
                    "damaged_files": list(st.damaged_files),
                },
                "in_flight_events": self.stats.in_flight_events,
            }
        )
        if self.stats.paused_reason:
            out["paused_reason"] = self.stats.paused_reason
        if stuck is not None:
            out["stuck"] = True
            out["stuck_reason"] = stuck
        if self.stats.last_error:
            out["last_error"] = self.stats.last_error
        return out

    def gauges(self) -> ExporterGauges:
        """This exporter's gauges, from memory: what a scrape reports.

        ``queue_events`` leaves out the events already finished whose item
        still waits for its others, so that enqueued = delivered +
        dead-lettered + queued holds at every moment (docs/operations.md,
        "Reconciliation").
        """
        st = self.queue.stats()
        return ExporterGauges(
            queue_events=max(0, st.events - self._finished_unacked),
            queue_bytes=st.bytes,
            queue_oldest_age_s=st.oldest_age_s,
            queue_refusing=st.refusing,
            queue_quarantined=st.quarantined,
            queue_salvaged=st.salvaged_events,
            queue_max_bytes=int(self.config.queue.max_bytes),
            in_flight_events=self.stats.in_flight_events,
            paused=self.stats.paused,
            dead_letter_events=self.delivery.dead_letter_count,
        )

    def stuck_reason(self) -> str | None:
        """Why the sender cannot make progress, once its storage writes have failed for ``stuck_after_s``."""
        now = self.clock.monotonic()
        with self._failing_lock:
            failing = list(self._failing.items())
        for what, (since, error) in failing:
            if now - since >= self.stuck_after_s:
                return f"sender stuck: {what} failing for {now - since:.0f}s ({error})"
        return None

    async def _write_io(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """A storage write on the I/O thread, remembering since when writes of this kind fail."""
        try:
            result = await self.host.run_io(fn, *args)
        except Exception as exc:
            with self._failing_lock:
                since = self._failing[what][0] if what in self._failing else self.clock.monotonic()
                self._failing[what] = (since, REDACTOR.scrub(str(exc))[:300])
            raise
        if what in self._failing:
            with self._failing_lock:
                self._failing.pop(what, None)
            log.warning("exporter %s: %s succeed again", self.id, what, extra={"exporter": self.id})
        return result

    def _recount_dead_letters(self) -> None:
        """Blocking: read the store's count (at start, and on the I/O thread later)."""
        try:
            self.delivery.dead_letter_count = self.deadletters.count()
        except Exception:  # a busy or closed store: keep the last value
            log.debug("exporter %s: counting dead letters failed", self.id, exc_info=True)

    # -- sender side (on the runner's own loop) ---------------------------------

    async def _start_in_loop(self) -> None:
        self._wake = asyncio.Event()
        await self.exporter.start()
        self._sender = asyncio.create_task(self._run(), name=f"sender-{self.id}")
        self._recounter = asyncio.create_task(self._recount_every(DEAD_LETTER_RECOUNT_S))

    async def _stop_in_loop(self, timeout: float) -> None:
        self._stopping = True
        if self._wake:
            self._wake.set()
        if self._recounter is not None:
            self._recounter.cancel()
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
                self._finished_unacked -= len(tracker.item.events) - tracker.pending
                await self.host.run_io(self.queue.release, tracker.item.id)
        self._trackers.clear()
        self.batcher.clear()
        self.stats.in_flight_events = 0
        await self.exporter.shutdown(max(0.1, deadline - time.monotonic()))

    async def _run(self) -> None:
        sem = asyncio.Semaphore(self.config.max_in_flight)
        while not self._stopping:
            await sem.acquire()
            try:
                batch = await self._next_batch()
            except Exception:
                sem.release()
                log.exception("exporter %s: reading the queue failed; retrying", self.id)
                await self._sleep(1.0)
                continue
            if not batch:
                sem.release()
                continue
            self._batch_created.inc()
            task = asyncio.create_task(self.delivery.deliver(batch))
            self._tasks.add(task)

            def done(t: asyncio.Task[None]) -> None:
                self._tasks.discard(t)
                sem.release()
                if not t.cancelled() and t.exception() is not None:
                    log.error("exporter %s: sender task failed: %r", self.id, t.exception())

            task.add_done_callback(done)

    async def _recount_every(self, seconds: float) -> None:
        """Set the dead-letter count from the store now and then, on the I/O thread."""
        while not self._stopping:
            await self._sleep(seconds)
            if not self._stopping:
                await self.host.run_io(self._recount_dead_letters)

    async def _fill(self, timeout: float) -> bool:
        """Move the next queue items into the batcher, as many as the request being filled has room
        for, in one trip to the I/O thread; False when none came within ``timeout``."""
        room = max(1, self.batcher.settings.max_events - len(self.batcher))
        items: list[QueueItem] = await self.host.run_io(self.queue.get_many, timeout, room)
        if not items:
            return False
        finished: list[int] = []
        now = time.time()
        for item in items:
            self._buffer_batch_sent.inc()
            # enqueued_at is the queue's wall-clock stamp, so the latency is too.
            self._buffer_latency.observe(max(0.0, now - item.enqueued_at) * 1e9)
            if not item.events:  # nothing to send: finished already
                finished.append(item.id)
                continue
            self._trackers[item.id] = self.batcher.add(item)
            self.stats.in_flight_events += len(item.events)
        if finished:
            await self.host.run_io(self.queue.ack, *finished)
        return True

    async def _next_batch(self) -> list[Pending]:
        """One request's worth of events, waiting up to ``batch.period`` for it to fill."""
        batcher = self.batcher
        while not self._stopping and not batcher.due():
            wait = batcher.wait_s()
            if not await self._fill(wait) and batcher.waited_out(wait):
                break
        return batcher.take()

    async def _finish(self, pairs: list[Pending]) -> None:
        """Count ``pairs`` finished; acknowledge every queue item that has nothing left."""
        done: list[Tracker] = []
        for p in pairs:
            p.tracker.pending -= 1
            if p.tracker.pending == 0 and not p.tracker.released:
                done.append(p.tracker)
        self._finished_unacked += sum(1 for p in pairs if not p.tracker.released)
        self.stats.in_flight_events -= len(pairs)
        for tracker in done:
            self._trackers.pop(tracker.item.id, None)
            self._finished_unacked -= len(tracker.item.events)
        if done:  # one transaction for every item this request finished
            await self._ack(*(tracker.item.id for tracker in done))

    async def _ack(self, *item_ids: int) -> None:
        """Acknowledge, retrying storage errors (a full disk): an unacknowledged
        item would be sent again after a restart, never lost."""
        await until_stored(
            lambda: self._write_io("acks", self.queue.ack, *item_ids),
            what=f"exporter {self.id}: ack of queue item(s) {', '.join(map(str, item_ids))}",
            on_stop="it will be sent again after restart",
            stopping=lambda: self._stopping,
            sleep=self._sleep,
        )

    async def _sleep(self, seconds: float) -> None:
        """Sleep by the Clock, but wake early on shutdown so a drain is not held up by backoff."""
        assert self._wake is not None
        if self._stopping:
            return
        # The deadline is fixed now: a clock moved before the sleeper first runs
        # (a test's FakeClock) must not push the wake-up later.
        deadline = self.clock.monotonic() + seconds
        sleeper = asyncio.ensure_future(self._sleep_until(deadline))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _sleep_until(self, deadline: float) -> None:
        while (left := deadline - self.clock.monotonic()) > 0:
            await self.clock.sleep(left)
