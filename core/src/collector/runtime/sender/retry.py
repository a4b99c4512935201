"""The retry policy: what happens to a request after the exporter answered.

As the exporter raises (docs/delivery.md, "The sender"):

* returns normally           delivered; its events are finished;
* RetryableError, timeout,   retried with full-jitter exponential backoff
  OSError, anything else     (:class:`collector.backoff.Backoff`, base
                             ``retry.initial_interval``, cap
                             ``retry.max_interval``), never sooner than the far
                             side's ``retry_after``;
* PermanentError             the request is split in halves until the rejected
                             events are isolated; those are dead-lettered with
                             the far side's status and problem body, the rest
                             are delivered;
* AuthError                  the exporter pauses (``/ready`` false), keeps the
                             data and retries every ``retry.auth_interval``;
* queue age > max_age        dead-lettered with reason ``max_age`` (checked
                             before every attempt, by the Clock).

Nothing here drops an event: the ways out are delivery and the dead-letter
store, and a store that fails (a full disk) is retried until it works or the
sender stops (then the events stay queued).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from collector.backoff import Backoff
from collector.clock import Clock
from collector.components import Event, RetrySettings
from collector.errors import AuthError, PermanentError, RetryableError
from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.sender.batching import Pending
from collector.telemetry import REDACTOR, Metrics

log = logging.getLogger("collector.runtime.sender")

# Writes to local storage (acks, dead letters) that fail are retried on this
# schedule: quick at first, then no more often than every 5 s.
STORAGE_BACKOFF = Backoff(base=0.1, cap=5.0)

Sleep = Callable[[float], Awaitable[None]]
RunIO = Callable[..., Awaitable[Any]]


@dataclass
class SenderStats:
    """What ``/health`` and the gauges report about one sender."""

    paused: bool = False
    paused_reason: str | None = None
    last_error: str | None = None
    in_flight_events: int = 0
    consecutive_failures: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """A failed attempt, classified: ``klass`` labels ``collector_exporter_retries_total``."""

    klass: str
    retry_after: float | None = None


def classify(exc: BaseException) -> Failure:
    """The retry class of a failure that is retried with backoff.

    PermanentError and AuthError are not retried this way; callers handle them
    first.  A RetryableError may carry its own class (``http_5xx``...).
    """
    if isinstance(exc, RetryableError):
        return Failure(getattr(exc, "klass", None) or "retryable", exc.retry_after)
    if isinstance(exc, TimeoutError):
        return Failure("timeout")
    if isinstance(exc, OSError):
        return Failure("network")
    return Failure("error")


def halves(batch: list[Pending]) -> tuple[list[Pending], list[Pending]]:
    """Split a rejected request to find which events the far side refuses."""
    mid = len(batch) // 2
    return batch[:mid], batch[mid:]


async def until_stored(
    write: Callable[[], Awaitable[Any]],
    *,
    what: str,
    on_stop: str,
    stopping: Callable[[], bool],
    sleep: Sleep,
    rng: random.Random | None = None,
) -> bool:
    """Run ``write`` until it succeeds; False when the sender stops first.

    A full disk must not lose data: the write is retried with
    :data:`STORAGE_BACKOFF` until it works, except while stopping, when the
    data is left where it is (queued) and ``on_stop`` explains what follows.
    """
    attempt = 0
    while True:
        try:
            await write()
            return True
        except Exception as exc:
            if stopping():
                log.warning("%s failed at shutdown (%s); %s", what, exc, on_stop)
                return False
            log.warning("%s failed (%s); retrying", what, exc)
            backoff = STORAGE_BACKOFF if rng is None else Backoff(STORAGE_BACKOFF.base, STORAGE_BACKOFF.cap, rng=rng)
            await sleep(backoff.delay(attempt))
            attempt += 1


class Delivery:
    """Sends one request until it is finished: delivered, dead-lettered or left queued at a stop."""

    def __init__(
        self,
        exporter_id: str,
        export: Callable[[list[Event]], Awaitable[None]],
        *,
        retry: RetrySettings,
        timeout: float,
        max_age: float,
        deadletters: DeadLetterStore,
        metrics: Metrics,
        stats: SenderStats,
        clock: Clock,
        run_io: RunIO,
        finish: Callable[[list[Pending]], Awaitable[None]],
        sleep: Sleep,
        stopping: Callable[[], bool],
        rng: random.Random | None = None,
    ) -> None:
        self.id = exporter_id
        self._export = export
        self.retry = retry
        self.timeout = timeout
        self.max_age = max_age
        self.deadletters = deadletters
        self.metrics = metrics
        self.stats = stats
        self.clock = clock
        self._run_io = run_io
        self._finish = finish
        self._sleep = sleep
        self._stopping = stopping
        self._rng = rng
        self.backoff = Backoff(retry.initial_interval, retry.max_interval, rng=rng)
        self._labels = {"exporter": exporter_id}
        self._delivered = metrics.delivered.labels(**self._labels)
        self._batch_sent = metrics.batch_sent.labels(**self._labels)
        # Counted in memory so the gauge is read at scrape time without a query;
        # the runner sets it from the store at start and now and then.
        self.dead_letter_count = 0

    async def deliver(self, batch: list[Pending]) -> None:
        attempt = 0
        while batch:
            batch = await self._expire(batch)
            if not batch:
                return
            if self._stopping() and attempt > 0:
                return  # leave it queued; the stop releases it
            started = time.monotonic()
            try:
                await asyncio.wait_for(self._export([p.event for p in batch]), self.timeout)
            except PermanentError as exc:
                self._observe(started, "rejected")
                if len(batch) == 1:
                    await self.dead_letter(batch, "rejected", exc.status, exc.body or exc.message)
                    self._recovered()
                    return
                first, second = halves(batch)
                await asyncio.gather(self.deliver(first), self.deliver(second))
                return
            except AuthError as exc:
                self._observe(started, "auth")
                self._pause(_auth_reason(exc))
                self.metrics.retries.labels(exporter=self.id, **{"class": "auth"}).inc()
                attempt += 1
                await self._sleep(self.retry.auth_interval)
                continue
            except Exception as exc:
                failure = classify(exc)
                self._observe(started, failure.klass)
                await self._sleep(self._retry_delay(exc, failure, attempt))
                attempt += 1
                continue
            self._observe(started, "delivered")
            self._batch_sent.inc()
            self._delivered.inc(len(batch))
            self._recovered()
            await self._finish(batch)
            return

    def _retry_delay(self, exc: BaseException, failure: Failure, attempt: int) -> float:
        """Count and log a retryable failure; the backoff before the next attempt."""
        self.metrics.retries.labels(exporter=self.id, **{"class": failure.klass}).inc()
        self.stats.consecutive_failures += 1
        # Shown by /health: the far side's answer may echo our credentials.
        self.stats.last_error = REDACTOR.scrub(f"{failure.klass}: {exc}")[:500]
        delay = self.backoff.delay(attempt, failure.retry_after)
        if failure.klass == "error":
            log.error("exporter %s: unexpected export failure; will retry", self.id, exc_info=exc)
        elif self.stats.consecutive_failures in (1, 10) or self.stats.consecutive_failures % 100 == 0:
            log.warning(
                "exporter %s: send failed (%s: %s); retrying in %.2fs",
                self.id,
                failure.klass,
                exc,
                delay,
                extra={"exporter": self.id},
            )
        return delay

    async def dead_letter(self, pairs: list[Pending], reason: str, status: int | None, body: str | None) -> None:
        """Move ``pairs`` to the dead letters (retrying a failing store), then finish them."""
        events = [p.event for p in pairs]

        def add() -> None:
            self.deadletters.add(events, reason, status=status, body=body)
            self.dead_letter_count += len(events)  # on the I/O thread, ordered with the recount

        stored = await until_stored(
            lambda: self._run_io(add),
            what=f"exporter {self.id}: dead-lettering {len(pairs)} event(s)",
            on_stop="the events stay queued",
            stopping=self._stopping,
            sleep=self._sleep,
            rng=self._rng,
        )
        if not stored:
            return
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

    async def _expire(self, batch: list[Pending]) -> list[Pending]:
        """Dead-letter the events whose queue item is older than ``max_age`` (by the Clock)."""
        limit = self.clock.time() - self.max_age
        old = [p for p in batch if p.tracker.item.enqueued_at < limit]
        if not old:
            return batch
        await self.dead_letter(old, "max_age", None, f"undelivered after {self.max_age:.0f}s")
        return [p for p in batch if p.tracker.item.enqueued_at >= limit]

    def _observe(self, started: float, outcome: str) -> None:
        self.metrics.send_latency.labels(exporter=self.id, outcome=outcome).observe(time.monotonic() - started)

    def _pause(self, reason: str) -> None:
        if not self.stats.paused:
            log.error(
                "exporter %s paused: the destination refused our credentials (%s); data is kept and "
                "retried every %.0fs",
                self.id,
                reason,
                self.retry.auth_interval,
                extra={"exporter": self.id},
            )
        self.stats.paused = True
        self.stats.paused_reason = reason

    def _recovered(self) -> None:
        if self.stats.paused:
            log.info("exporter %s resumed: credentials accepted again", self.id, extra={"exporter": self.id})
        self.stats.paused = False
        self.stats.paused_reason = None
        self.stats.consecutive_failures = 0


def _auth_reason(exc: AuthError) -> str:
    """Why the exporter is paused, as logged and shown by /health (secrets masked)."""
    reason = exc.message
    if exc.status is not None and str(exc.status) not in reason:
        reason = f"HTTP {exc.status}: {reason}"
    return REDACTOR.scrub(reason)[:500]
