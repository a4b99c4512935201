"""Pull receivers: windows on a schedule, watermarks, backfill, retries.

A pull receiver (Prometheus, Kubernetes, Run:ai, S3...) subclasses
:class:`PullReceiver` and implements one method::

    async def collect(self, window: Window) -> list[Any]   # records for [start, end)

The framework does the rest (docs/plugin-authors.md, "Pull receivers"):

* windows ``[start, end)`` are aligned to the schedule (an ``interval`` is
  aligned to the Unix epoch; a ``cron`` expression, with an optional leading
  seconds field, gives the window ends); a window is collected once its end
  plus ``offset`` (room for late data) has passed, one at a time, in order;
* the records go through the pipeline with ``meta.window_start``,
  ``meta.window_end`` and ``meta.interval_seconds``; only when ``emit`` returns
  (every exporter queue committed) is the **watermark** -- the end of the last
  delivered window -- saved in the receiver's state store;
* on start it resumes from the watermark and backfills the windows missed
  while it was down, up to ``max_backfill``; older windows are counted
  (``collector_pull_skipped_windows_total``) and logged, never silently lost;
* a failed window is retried with full-jitter backoff, the same window, until
  it succeeds; the watermark never moves past a window that was not delivered;
* only the leader (the service's coordinator; local by default) collects; it
  asks again after collecting and before committing, so a replica that lost
  leadership meanwhile (fenced by its coordinator) commits nothing; a new
  leader takes the watermark the coordinator shares (the later of it and the
  local one) and goes on from there.

Ids: use :meth:`PullReceiver.event_id` (a UUIDv5 over the source, the
record's natural key and the window start), so a replay or a backfill sends
the same ids and OpenMeter de-duplicates them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collector.backoff import Backoff
from collector.clock import finish_task, sleep_until_woken
from collector.components import ConfigT, Meta, Receiver
from collector.durations import Duration, format_duration
from collector.errors import ConfigError, RetryableError
from collector.events import format_time, stable_id
from collector.mapping import CompiledMapping

WATERMARKS = "watermark"


class NotLeader(Exception):
    """Leadership was lost while a window was being collected: it is not committed here."""


class ScheduleConfig(BaseModel):
    """When a pull receiver collects, and how far back it catches up."""

    model_config = ConfigDict(extra="forbid")

    interval: Duration | None = Field(
        None,
        gt=0,
        description="Window length, e.g. 60s, 5m, 1h (aligned to the epoch). Default 60s unless cron is set.",
    )
    cron: str | None = Field(
        None,
        description="Cron expression for window ends instead of an interval; 5 fields, or 6 with seconds first "
        "(e.g. '0 */5 * * * *'). Windows run from one firing to the next.",
    )
    offset: Duration = Field(
        0.0, ge=0, description="Wait this long after a window ends before collecting it (late data)."
    )
    max_backfill: Duration = Field(
        24 * 3600.0,
        ge=0,
        description="On start, catch up on missed windows this far back; older ones are counted and logged.",
    )
    retry_initial: Duration = Field(1.0, gt=0, description="Backoff base for a failed window (1s).")
    retry_max: Duration = Field(60.0, gt=0, description="Backoff cap for a failed window (60s).")

    @field_validator("cron")
    @classmethod
    def _check_cron(cls, v: str | None) -> str | None:
        if v is not None:
            from croniter import croniter

            fields = v.split()
            if len(fields) not in (5, 6) or not croniter.is_valid(v, second_at_beginning=len(fields) == 6):
                raise ValueError(f"{v!r} is not a cron expression (5 fields, or 6 with seconds first)")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> ScheduleConfig:
        if self.interval is not None and self.cron is not None:
            raise ValueError("set interval or cron, not both")
        return self

    def schedule(self) -> Schedule:
        if self.cron is not None:
            return CronSchedule(self.cron)
        return IntervalSchedule(self.interval or 60.0)


@dataclass(frozen=True)
class Window:
    """A half-open time window ``[start, end)`` in Unix seconds."""

    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def start_time(self) -> str:
        return format_time(datetime.fromtimestamp(self.start, UTC))

    @property
    def end_time(self) -> str:
        return format_time(datetime.fromtimestamp(self.end, UTC))

    def __str__(self) -> str:
        return f"[{self.start_time}, {self.end_time})"


class Schedule:
    """Window boundaries: ``end_at_or_before(t)`` and ``next_end(t)``."""

    def end_at_or_before(self, t: float) -> float:
        raise NotImplementedError

    def next_end(self, t: float) -> float:
        """The first boundary strictly after ``t``."""
        raise NotImplementedError

    def window_ending(self, end: float) -> Window:
        raise NotImplementedError

    def windows(self, after: float, until: float) -> Iterator[Window]:
        """Windows whose start is at or after boundary ``after`` and whose end is at or before ``until``."""
        end = self.next_end(after)
        while end <= until:
            w = self.window_ending(end)
            if w.start >= after - 1e-9:
                yield w
            end = self.next_end(end)


class IntervalSchedule(Schedule):
    def __init__(self, interval: float) -> None:
        self.interval = interval

    def end_at_or_before(self, t: float) -> float:
        return (t // self.interval) * self.interval

    def next_end(self, t: float) -> float:
        return (t // self.interval + 1) * self.interval

    def window_ending(self, end: float) -> Window:
        return Window(end - self.interval, end)


class CronSchedule(Schedule):
    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._seconds_first = len(expression.split()) == 6

    def _iter(self, t: float) -> Any:
        from croniter import croniter

        return croniter(self.expression, datetime.fromtimestamp(t, UTC), second_at_beginning=self._seconds_first)

    def end_at_or_before(self, t: float) -> float:
        nxt = self.next_end(t)
        return float(self._iter(nxt).get_prev(float))

    def next_end(self, t: float) -> float:
        return float(self._iter(t).get_next(float))

    def window_ending(self, end: float) -> Window:
        return Window(float(self._iter(end).get_prev(float)), end)


class PullReceiver(Receiver[ConfigT]):
    """Base class of receivers that collect usage per time window.

    The config model must include the :class:`ScheduleConfig` fields (subclass
    it).  Subclasses implement :meth:`collect` and set ``source`` (used in ids).
    """

    source: str = "collector"
    #: the receiver's ``mapping`` setting, compiled (None: the receiver's default events); see window_event()
    mapping: CompiledMapping | None = None
    # False for `collector backfill`, which drives run_window() itself and
    # must not start the schedule loop (nor touch the live watermark).
    autorun: bool = True

    def __init__(self, ctx: Any, config: ConfigT) -> None:
        super().__init__(ctx, config)
        sched_cfg: Any = config
        if not isinstance(sched_cfg, ScheduleConfig):
            raise ConfigError("a pull receiver's config must subclass ScheduleConfig", f"receivers.{ctx.id}")
        self.schedule_config = sched_cfg
        self.schedule = sched_cfg.schedule()
        self.offset = sched_cfg.offset
        self.max_backfill = sched_cfg.max_backfill
        self.retry_initial = sched_cfg.retry_initial
        self.retry_max = sched_cfg.retry_max
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._store: Any = None
        self.current: Window | None = None
        self.watermark: float | None = None
        m = ctx.telemetry.metrics
        self._m_duration = m.pull_duration.labels(receiver=ctx.id)
        self._m_ok = m.pull_windows.labels(receiver=ctx.id, outcome="success")
        self._m_fail = m.pull_windows.labels(receiver=ctx.id, outcome="failure")
        self._m_last = m.pull_last_success.labels(receiver=ctx.id)
        self._m_lag = m.pull_lag.labels(receiver=ctx.id)
        self._m_skipped = m.pull_skipped.labels(receiver=ctx.id)
        self._m_leader = m.leader.labels(receiver=ctx.id)

    # -- what subclasses implement ---------------------------------------------

    async def collect(self, window: Window) -> list[Any]:
        """Records for ``window``; raise to have the same window retried."""
        raise NotImplementedError

    def event_id(self, window: Window, *natural_key: Any) -> str:
        """Deterministic id: source, the record's natural key, the window start."""
        return stable_id(self.source, *natural_key, window.start_time)

    def window_event(
        self,
        window: Window,
        meta: Meta,
        record: dict[str, Any],
        *,
        event_type: str,
        key: tuple[Any, ...],
        describe: Callable[[dict[str, Any]], str],
    ) -> dict[str, Any] | None:
        """The event for one ``record`` of ``window``, stamped with the window's start and the id of ``key``.

        Without :attr:`mapping`: the receiver's default event, with ``record["subject"]`` and
        ``record["data"]`` (None when the record has no subject: it is not billed).  With one: what the
        mapping makes of the record, the same fields filling what it leaves out; a mapping that fails
        raises :class:`RetryableError` naming the record (``describe(record)``, asked only then), so the
        window is tried again.
        """
        event_id = self.event_id(window, *key)
        if self.mapping is None:
            if record["subject"] is None:
                return None
            return {"specversion": "1.0", "id": event_id, "source": self.source, "type": event_type,
                    "subject": record["subject"], "time": window.start_time, "data": record["data"]}  # fmt: skip
        defaults = {"specversion": "1.0", "id": event_id, "source": self.source, "type": event_type,
                    "time": window.start_time}  # fmt: skip
        try:
            return self.mapping.to_event(record, meta, defaults)
        except ValueError as exc:
            raise RetryableError(f"receiver {self.id}: mapping of {describe(record)} {exc}") from None

    # -- state ---------------------------------------------------------------------

    def _state(self) -> Any:
        if self._store is None:
            from collector.state import StateStore

            self._store = StateStore(self.ctx.storage_dir / "state.sqlite")
        return self._store

    def _coordinator(self) -> Any:
        return getattr(self.ctx, "coordinator", None)

    async def load_watermark(self) -> float | None:
        """The later of the local watermark and the one the coordinator shares between replicas."""
        value = await asyncio.to_thread(self._state().get, WATERMARKS, self.id)
        local = float(value) if value is not None else None
        load = getattr(self._coordinator(), "load_watermark", None)  # None: no coordinator, or one that shares none
        if load is None or not self.autorun:
            return local
        shared = await load(self.id)
        candidates = [w for w in (local, shared) if w is not None]
        return max(candidates) if candidates else None

    async def save_watermark(self, end: float) -> None:
        await asyncio.to_thread(self._state().put, WATERMARKS, self.id, end)
        self.watermark = end
        coordinator = self._coordinator()
        save = getattr(coordinator, "save_watermark", None)
        if save is None or not self.autorun:
            return
        try:
            await save(self.id, end)
        except Exception as exc:
            # The window is committed and the local watermark saved; a replica that takes over
            # without this one collects the window again, with the same ids (de-duplicated).
            self.log.warning(
                "receiver %s: could not share the watermark %s with coordinator %s: %s",
                self.id, format_time(datetime.fromtimestamp(end, UTC)), coordinator.id, exc,
            )  # fmt: skip

    # -- lifecycle -----------------------------------------------------------------

    async def _start(self) -> None:
        if not self.autorun:
            return
        self.watermark = await self.load_watermark()
        self._task = asyncio.create_task(self._run(), name=f"pull-{self.id}")

    async def _shutdown(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            # A window being committed finishes (its watermark is saved);
            # a collection in progress is abandoned and redone next time.
            await finish_task(self._task, 5.0)
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
            self._store = None

    def is_leader(self) -> bool:
        coordinator = self._coordinator()
        return True if coordinator is None else bool(coordinator.is_leader())

    def health(self) -> dict[str, Any]:
        out = super().health()
        out["watermark"] = format_time(datetime.fromtimestamp(self.watermark, UTC)) if self.watermark else None
        out["leader"] = self.is_leader()
        if self.current is not None:
            out["retrying_window"] = str(self.current)
        return out

    # -- the loop ------------------------------------------------------------------

    def pending_windows(self, now: float) -> tuple[list[Window], int]:
        """Windows due at ``now`` after the watermark, and how many are skipped past max_backfill."""
        due_end = self.schedule.end_at_or_before(now - self.offset)
        if self.watermark is None:
            # First start: begin with the last complete window, no history.
            return [self.schedule.window_ending(due_end)], 0
        windows = list(self.schedule.windows(self.watermark, due_end))
        oldest_allowed = due_end - self.max_backfill
        kept = [w for w in windows if w.start >= oldest_allowed - 1e-9]
        return kept, len(windows) - len(kept)

    async def _run(self) -> None:
        clock = self.ctx.clock
        led = True  # the watermark loaded at start is this replica's view
        while not self._stopping:
            if not self.is_leader():
                self._m_leader.set(0)
                led = False
                await self._sleep(1.0)
                continue
            self._m_leader.set(1)
            # Another replica may have led (and moved the shared watermark) since this one last
            # looked, whether or not this loop saw the hand-over: go on from the later watermark.
            shared = await self.load_watermark()
            if shared is not None and (self.watermark is None or shared > self.watermark):
                self.watermark = shared
                self.log.info(
                    "receiver %s: continuing after %s, the watermark the replicas share",
                    self.id, format_time(datetime.fromtimestamp(shared, UTC)),
                )  # fmt: skip
            elif not led:
                self.log.info("receiver %s: leading now", self.id)
            led = True
            windows, skipped = self.pending_windows(clock.time())
            if skipped:
                self._m_skipped.inc(skipped)
                self.log.warning(
                    "receiver %s: %d window(s) older than max_backfill=%s were skipped (collector down too long); "
                    "run `collector backfill %s --from ... --to ...` to recover them",
                    self.id, skipped, format_duration(self.max_backfill), self.id,
                )  # fmt: skip
                if windows:
                    # The watermark moves to just before the oldest window we will do.
                    await self.save_watermark(windows[0].start)
            for window in windows:
                if self._stopping or not self.is_leader():
                    break
                await self._run_window_until_done(window)
            if windows and not self._stopping:
                # Retries can outlast a window: collect the windows that came due meanwhile
                # now, rather than sleeping until the next boundary first.
                continue
            if self.watermark is not None:
                self._m_lag.set(max(0.0, clock.time() - self.watermark))
            nxt = self.schedule.next_end(self.schedule.end_at_or_before(clock.time() - self.offset))
            await self._sleep(max(0.0, nxt + self.offset - clock.time()))

    async def _run_window_until_done(self, window: Window) -> None:
        attempt = 0
        self.current = window
        while not self._stopping and self.is_leader():
            try:
                await self.run_window(window)
            except NotLeader:
                self.log.warning(
                    "receiver %s: leadership lost while collecting window %s; nothing committed, the new "
                    "leader collects it", self.id, window,
                )  # fmt: skip
                break
            except Exception as exc:
                self._m_fail.inc()
                delay = Backoff(self.retry_initial, self.retry_max).delay(attempt)
                error = f"window {window}: {exc}"
                # One line per problem, not one per retry: the same failure again is logged at debug
                # level (collector_pull_windows_total{outcome="failure"} still counts every attempt).
                level = logging.DEBUG if error == self.last_error else logging.ERROR
                self.last_error = error
                self.log.log(
                    level, "receiver %s: window %s failed (%s); retrying the same window in %.1fs",
                    self.id, window, exc, delay,
                )  # fmt: skip
                attempt += 1
                await self._sleep(delay)
                continue
            await self.save_watermark(window.end)
            if attempt:
                self.log.info("receiver %s: window %s collected after %d failed attempt(s)", self.id, window, attempt)
            self._m_ok.inc()
            self._m_last.set(time.time())
            self.last_error = None
            break
        self.current = None

    async def run_window(self, window: Window) -> int:
        """Collect and commit one window (no watermark change); returns the record count."""
        t0 = time.monotonic()
        records = await self.collect(window)
        self._m_duration.observe(time.monotonic() - t0)
        if not self.is_leader():
            raise NotLeader(f"receiver {self.id} no longer leads; window {window} not committed")
        if records:
            await self.emit(records, Meta(window=window))
        return len(records)

    async def _sleep(self, seconds: float) -> None:
        await sleep_until_woken(self.ctx.clock, 0.0 if self._stopping else seconds, self._wake)
