"""The ``aggregate`` processor: sums and counts per group over tumbling windows.

Events are grouped by ``source``, ``type``, ``subject`` and the ``group_by``
paths into windows ``[start, end)`` of ``window`` aligned to the Unix epoch,
over the event's own ``time``.  For each group and window ONE event goes out,
with a deterministic id (a UUIDv5 over the processor id, source, type,
subject, group values, window start and end), ``time`` = the window start,
and ``data`` holding the aggregates, the ``data.*`` group values and
``window_start``/``window_end``.  Output keeps the input's ``type`` so a meter
that sums ``data.tokens`` over raw events sums the aggregated ones unchanged
(a ``count`` becomes a field that a meter sums).

Never lose, never double-count:

* Input is absorbed in the pipeline's outcome hook (``Batch.on_outcome``):
  after every queue of the call committed and before the receiver is
  answered, ONE state-store transaction adds the events to their windows.  A
  call that fails anywhere absorbs nothing; a failed absorb (e.g. the store is
  full) fails the call, so the client retries.
* Retries are not counted twice: the transaction also remembers each input
  event's ``source`` + ``id`` for ``dedupe_window`` and skips an event it has
  already absorbed (``reason="duplicate"``).  So a client retrying after a lost
  acknowledgement, or after a crash between absorb and acknowledgement, is
  harmless.
* Closing: a background task checks every ``close_interval`` (1 s) and closes
  every window whose ``end + allowed_lateness`` the clock has passed.  In one
  transaction it marks them *closing* (a closing window takes no more input),
  then forwards their events down the rest of the pipeline, and deletes them
  only after the forward returned (committed).  A crash or failure in
  between re-emits the same ids, which OpenMeter drops.  On shutdown open
  windows stay in the store and resume after a restart; windows that closed
  while the collector was down are emitted right after start.
* Late input (its window is closing, or already closed by the clock and
  gone): with ``late: correction`` (the default) it goes into a *correction*
  window for the same group and original window, with its own deterministic
  id, which closes one ``window`` after arrival (processing time) plus
  ``allowed_lateness``; meters add it to the original, so nothing is lost or
  counted twice.  With ``late: drop`` it is counted (``reason="late"``) and
  dropped.

Absorbed events are counted in ``collector_processor_dropped_events_total``
with ``reason="aggregated"`` so that the per-pipeline counters reconcile.
"""

from __future__ import annotations

import asyncio
import decimal
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from collector.builtin.processors.common import Failures, ProcessorConfig, RecordProcessor
from collector.components import Batch, Event, Meta
from collector.durations import Duration
from collector.events import format_time, stable_id
from collector.state import Entry, StateStore, evictions_counter

STATE_FILE = "aggregate.sqlite"
NS_WINDOWS = "windows"
NS_SEEN = "seen"
NS_META = "meta"
CLOSED_BEFORE = "closed_before"  # ms: every window ending before it may have been emitted
EMIT_BATCH = 500  # windows per forward
_PAD = 15  # digits of the millisecond timestamp that prefixes a window's key (sorts by closing time)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_DECIMAL = decimal.Context(prec=60)  # exact for any realistic sum of JSON numbers

_RESERVED_TOP = frozenset(
    {"id", "source", "type", "subject", "time", "specversion", "datacontenttype", "dataschema", "data", "data_base64"}
)
_WINDOW_FIELDS = ("window_start", "window_end")
_EXTENSION_NAME = re.compile(r"[a-z0-9]{1,20}")

Op = Literal["sum", "count", "min", "max"]


class Aggregation(BaseModel):
    """One aggregate computed per group and window."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    op: Op = Field(description="sum, count, min or max.")
    field: str | None = Field(
        None,
        description="Dotted path of the value, e.g. `data.tokens` (numbers or numeric strings). "
        "Required for sum, min and max; for count, counts the events where it is present (default: all events).",
    )
    as_: str = Field(alias="as", description="Name of the result in the output event's `data`.")

    @model_validator(mode="after")
    def _check(self) -> Aggregation:
        if self.op != "count" and not self.field:
            raise ValueError(f"op {self.op} needs a field, e.g. field: data.tokens")
        if not self.as_ or "." in self.as_:
            raise ValueError("`as` must be a plain name (written to data.<as>)")
        if self.as_ in _WINDOW_FIELDS:
            raise ValueError(f"`as` may not be {self.as_} (the processor writes it)")
        return self


class AggregateConfig(ProcessorConfig):
    """Sum/count/min/max per subject, type and `group_by` over tumbling windows of event time; one event per group
    and window, with a deterministic id. See docs/processors/aggregate.md."""

    window: Duration = Field(60.0, gt=0, description="Window length: a duration (60s, 5m, 1h) or seconds.")
    allowed_lateness: Duration = Field(
        5.0,
        ge=0,
        description="How long after a window's end it still takes events before it is closed and emitted.",
    )
    group_by: list[str] = Field(
        default_factory=list,
        description="Dotted paths grouped on besides source, type and subject, e.g. data.model. "
        "Their values are copied to the same path of the output event.",
    )
    aggregations: list[Aggregation] = Field(min_length=1, description="What to compute per group and window.")
    late: Literal["correction", "drop"] = Field(
        "correction",
        description="An event for a window already closed: correction (default) emits it in a separate event "
        "with its own id for the same window; drop counts it (reason late) and drops it.",
    )
    dedupe_window: Duration = Field(
        24 * 3600.0,
        ge=0,
        description="How long the source and id of absorbed events are remembered, so that a retried event is not "
        "counted twice (0 turns it off).",
    )
    max_keys: int = Field(
        1_000_000,
        gt=0,
        description="Most entries in the state store (open windows plus remembered ids). Remembered ids closest "
        "to expiry are evicted first; open windows never are: when they alone fill it, input is refused "
        "with backpressure (503) until windows close.",
    )
    close_interval: Duration = Field(1.0, gt=0, description="How often the processor looks for windows to close.")

    @model_validator(mode="after")
    def _check(self) -> AggregateConfig:
        window_ms = float(self.window) * 1000
        if window_ms < 1 or abs(window_ms - round(window_ms)) > 1e-6:
            raise ValueError("window must be a whole number of milliseconds, at least 1ms")
        names = [a.as_ for a in self.aggregations]
        if len(set(names)) != len(names):
            raise ValueError(f"aggregation names (`as`) must be unique; got {names}")
        if len(set(self.group_by)) != len(self.group_by):
            raise ValueError(f"group_by lists a path twice: {self.group_by}")
        for path in self.group_by:
            parts = path.split(".")
            if not all(parts):
                raise ValueError(f"group_by: {path!r} is not a dotted path like data.model")
            if parts[0] in _RESERVED_TOP and not (parts[0] == "data" and len(parts) > 1):
                raise ValueError(
                    f"group_by: {path!r} cannot be grouped on (source, type and subject always are; "
                    "use data.<field> or an extension attribute)"
                )
            if parts[0] == "data" and parts[1] in (*names, *_WINDOW_FIELDS):
                raise ValueError(f"group_by: {path!r} collides with an aggregate or window field in data")
            if parts[0] != "data" and (len(parts) > 1 or not _EXTENSION_NAME.fullmatch(parts[0])):
                raise ValueError(
                    f"group_by: {path!r} is neither data.<field> nor an extension attribute (lower-case letters "
                    "and digits)"
                )
        return self


# -- helpers -----------------------------------------------------------------------


def _lookup(record: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        if not isinstance(record, dict):
            return None
        record = record.get(part)
    return record


def _time_ms(value: Any) -> int:
    if not isinstance(value, str):
        raise ValueError(f"needs an RFC 3339 time, got {type(value).__name__}")
    when = datetime.fromisoformat(value)
    if when.tzinfo is None:
        raise ValueError(f"time {value!r} has no timezone")
    ms = (when - _EPOCH) // _MS
    if ms < 0:
        raise ValueError(f"time {value!r} is before 1970")
    return ms


def _number(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a number: {value!r}")
    # repr(float) is the shortest text that reads back the same: 0.1 stays 0.1, not 0.1000000000000000055...
    text = repr(value) if isinstance(value, float) else value.strip() if isinstance(value, str) else value
    try:
        number = Decimal(text)
    except decimal.InvalidOperation:
        raise ValueError(f"not a number: {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return number


def _json_number(text: str) -> int | float:
    number = Decimal(text)
    if number.as_tuple().exponent >= 0:  # type: ignore[operator]
        return int(number)
    return float(number)


def _iso(ms: int) -> str:
    return format_time(_EPOCH + ms * _MS)


def _key(end_ms: int, bucket_id: str) -> str:
    return f"{end_ms:0{_PAD}d}/{bucket_id}"


@dataclass(frozen=True)
class _Item:
    """One input event, ready to be absorbed."""

    input_key: str | None  # remembers source + id against retries (None: no id, or dedupe_window 0)
    source: str
    type: str
    subject: str
    group: list[list[Any]]  # [[path, value], ...]
    start: int  # window, ms since the epoch
    end: int
    values: tuple[Decimal | int | None, ...]  # per aggregation; count: 1 or 0


class AggregateProcessor(RecordProcessor):
    def __init__(self, ctx: Any, config: AggregateConfig) -> None:
        super().__init__(ctx, config)
        self.window_ms = round(float(config.window) * 1000)
        self.lateness_ms = round(float(config.allowed_lateness) * 1000)
        self.dedupe_window = float(config.dedupe_window)
        self.interval = float(config.close_interval)
        self.group_paths = [(p, tuple(p.split("."))) for p in config.group_by]
        self.aggs = [(a.op, tuple(a.field.split(".")) if a.field else None, a.as_) for a in config.aggregations]
        self.store: StateStore | None = None
        self.emitted = 0
        self.passes = 0  # closing passes done (tests wait on it)
        self.close_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._sleeping = False

    # -- lifecycle -------------------------------------------------------------------

    async def _start(self) -> None:
        path = self.ctx.storage_dir / STATE_FILE
        self.store = await asyncio.to_thread(self._open, path)
        self._stopping = False
        self._task = asyncio.create_task(self._closer(), name=f"aggregate-closer:{self.id}")

    def _open(self, path: Any) -> StateStore:
        store = StateStore(path, max_keys=self.config.max_keys, on_full="evict")
        with store.transaction() as tx:
            # Created while the store has room, so that a full store never stops windows from closing.
            if tx.get(NS_META, CLOSED_BEFORE) is None:
                tx.put(NS_META, CLOSED_BEFORE, 0)
        return store

    async def _shutdown(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            if self._sleeping:
                task.cancel()
            try:
                await task  # a pass in progress finishes its forward and delete
            except asyncio.CancelledError:
                pass
        await super()._shutdown()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
            self.store = None

    def health(self) -> dict[str, Any]:
        out = super().health()
        out["windows_emitted"] = self.emitted
        if self.close_error:
            out["close_error"] = self.close_error
        return out

    @property
    def idle(self) -> bool:
        """True while the closer waits for its next pass."""
        return self._sleeping

    def _now_ms(self) -> int:
        return int(self.ctx.clock.time() * 1000)

    # -- input -----------------------------------------------------------------------

    def _item(self, record: Any) -> _Item:
        if not isinstance(record, dict):
            raise ValueError(f"needs a CloudEvent object, got {type(record).__name__}")
        head = []
        for name in ("source", "type", "subject"):
            value = record.get(name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"needs a non-empty string {name}")
            head.append(value)
        t = _time_ms(record.get("time"))
        start = t - t % self.window_ms
        group = [[path, _lookup(record, parts)] for path, parts in self.group_paths]
        values: list[Decimal | int | None] = []
        for op, parts, name in self.aggs:
            raw = _lookup(record, parts) if parts else None
            if op == "count":
                values.append(1 if parts is None or raw is not None else 0)
            elif raw is None:
                raise ValueError(f"{'.'.join(parts or ())} is missing (needed for {op} as {name})")
            else:
                try:
                    values.append(_number(raw))
                except ValueError as exc:
                    raise ValueError(f"{'.'.join(parts or ())}: {exc}") from None
        input_key = None
        if self.dedupe_window > 0 and record.get("id") is not None:
            input_key = stable_id("aggregate-input", head[0], record.get("id"))
        return _Item(input_key, head[0], head[1], head[2], group, start, start + self.window_ms, tuple(values))

    async def process_batch(self, batch: Batch, meta: Meta) -> Batch:
        if self.store is None:
            raise RuntimeError(f"processor {self.id} is not started")
        items: list[_Item] = []
        failures = Failures()
        for i, record in enumerate(batch.events):
            try:
                items.append(self._item(record))
            except (ValueError, TypeError, OverflowError) as exc:
                failures.add(i, record, f"aggregate {self.id}: {exc}")
        await self.settle(failures)
        result = Batch([], [])
        if items:

            async def absorb(committed: bool) -> None:
                if committed:
                    await self._absorb(items)

            result.on_outcome.append(absorb)
        return result

    async def _absorb(self, items: list[_Item]) -> None:
        store = self.store
        if store is None:
            raise RuntimeError(f"processor {self.id} is stopped")
        absorbed, duplicates, late, evicted = await asyncio.to_thread(self._absorb_sync, store, items, self._now_ms())
        self.count_dropped(absorbed, "aggregated")
        self.count_dropped(duplicates, "duplicate")
        self.count_dropped(late, "late")
        if evicted:
            evictions_counter(self.ctx.metrics).labels(component=self.id).inc(evicted)
            self.log.warning("aggregate %s: state store full; forgot %d remembered event id(s)", self.id, evicted)

    def _bucket_id(self, item: _Item, correction: int | None) -> str:
        parts: list[Any] = [self.id, item.source, item.type, item.subject, item.group, _iso(item.start), _iso(item.end)]
        if correction is not None:
            parts += ["correction", _iso(correction)]
        return stable_id(*parts)

    def _new_bucket(self, item: _Item, correction: int | None) -> dict[str, Any]:
        return {
            "id": self._bucket_id(item, correction),
            "source": item.source,
            "type": item.type,
            "subject": item.subject,
            "group": item.group,
            "start": item.start,
            "end": item.end,
            "correction": correction,
            "acc": {},
            "n": 0,
            "closing": False,
        }

    def _merge(self, bucket: dict[str, Any], item: _Item) -> None:
        acc = bucket["acc"]
        for (op, _, name), value in zip(self.aggs, item.values, strict=True):
            if op == "count":
                acc[name] = int(acc.get(name, 0)) + int(value or 0)
                continue
            assert isinstance(value, Decimal)
            old = acc.get(name)
            if old is None:
                new = value
            elif op == "sum":
                new = _DECIMAL.add(Decimal(old), value)
            elif op == "min":
                new = min(Decimal(old), value)
            else:
                new = max(Decimal(old), value)
            acc[name] = str(new)
        bucket["n"] += 1

    def _absorb_sync(self, store: StateStore, items: list[_Item], now_ms: int) -> tuple[int, int, int, int]:
        """ONE transaction: skip retried events, add the rest to their windows, remember their ids."""
        now = now_ms / 1000
        absorbed = duplicates = late = 0
        with store.transaction() as tx:
            input_keys = [it.input_key for it in items if it.input_key is not None]
            seen = set(tx.get_many(NS_SEEN, input_keys, now=now)) if input_keys else set()
            # Windows ending before this were claimed by a closing pass (whatever the clock says now):
            # guards against a wall clock that steps back, or another process whose clock is ahead.
            closed_before = int(tx.get(NS_META, CLOSED_BEFORE, 0))
            main = {id(it): _key(it.end, self._bucket_id(it, None)) for it in items}
            buckets: dict[str, dict[str, Any]] = tx.get_many(NS_WINDOWS, main.values())
            dirty: set[str] = set()
            remember: list[str] = []
            for item in items:
                if item.input_key is not None:
                    if item.input_key in seen:
                        duplicates += 1
                        continue
                    seen.add(item.input_key)
                    remember.append(item.input_key)
                key = main[id(item)]
                bucket = buckets.get(key)
                if bucket is None and item.end >= closed_before and item.end + self.lateness_ms >= now_ms:
                    bucket = buckets[key] = self._new_bucket(item, None)
                elif bucket is None or bucket["closing"]:
                    # Its window was emitted (or is being emitted): never add to what went out.
                    if self.config.late == "drop":
                        late += 1
                        continue
                    key, bucket = self._correction_bucket(tx, buckets, item, max(now_ms, closed_before))
                self._merge(bucket, item)
                dirty.add(key)
                absorbed += 1
            # Windows have no expiry, so room for them can only come from expired or evicted ids.
            evicted = tx.put_many(NS_WINDOWS, [(k, buckets[k]) for k in dirty], now=now)
            if remember:
                expires = now + self.dedupe_window
                evicted += tx.put_many(NS_SEEN, [(k, b"", expires) for k in remember], now=now)
                tx.purge_expired(now, limit=max(1000, 2 * len(remember)))
        return absorbed, duplicates, late, evicted

    def _correction_bucket(
        self, tx: Any, buckets: dict[str, dict[str, Any]], item: _Item, now_ms: int
    ) -> tuple[str, dict[str, Any]]:
        """The open correction window of ``item``'s group and window for the arrival window of ``now_ms``."""
        arrival = now_ms - now_ms % self.window_ms
        while True:
            bucket_id = self._bucket_id(item, arrival)
            key = _key(arrival + self.window_ms, bucket_id)
            bucket = buckets.get(key)
            if bucket is None:
                bucket = tx.get(NS_WINDOWS, key)
            if bucket is None:
                bucket = self._new_bucket(item, arrival)
            if not bucket["closing"]:
                buckets[key] = bucket
                return key, bucket
            arrival += self.window_ms  # that one is already going out (clocks disagree): use the next

    # -- output ----------------------------------------------------------------------

    def _event(self, bucket: dict[str, Any]) -> Event:
        data: dict[str, Any] = {}
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": bucket["id"],
            "source": bucket["source"],
            "type": bucket["type"],
            "subject": bucket["subject"],
            "time": _iso(bucket["start"]),
        }
        for path, value in bucket["group"]:
            parts = path.split(".")
            if parts[0] == "data":
                target = data
                for part in parts[1:-1]:
                    target = target.setdefault(part, {})
                target[parts[-1]] = value
            elif value is not None:
                event[parts[0]] = value
        for op, _, name in self.aggs:
            value = bucket["acc"].get(name)
            if op == "count":
                data[name] = int(value or 0)
            elif value is not None:
                data[name] = _json_number(value)
        data["window_start"] = _iso(bucket["start"])
        data["window_end"] = _iso(bucket["end"])
        event["data"] = data
        return event

    def _claim(self, now_ms: int, limit: int) -> list[Entry]:
        """Due windows (end + allowed_lateness passed), marked closing in the same transaction."""
        store = self.store
        assert store is not None
        boundary = now_ms - self.lateness_ms
        if boundary <= 0:
            return []
        with store.transaction() as tx:
            if boundary > int(tx.get(NS_META, CLOSED_BEFORE, 0)):
                tx.put(NS_META, CLOSED_BEFORE, boundary)
            due = tx.items(NS_WINDOWS, end=f"{boundary:0{_PAD}d}", limit=limit)
            mark = [(e.key, {**e.value, "closing": True}) for e in due if not e.value["closing"]]
            if mark:
                tx.put_many(NS_WINDOWS, mark)
        return due

    async def close_due(self) -> int:
        """Emit every window due now; returns how many.  Its state is deleted only after the forward returned."""
        emitted = 0
        while self.store is not None:
            due = await asyncio.to_thread(self._claim, self._now_ms(), EMIT_BATCH)
            if not due:
                break
            await self.forward([self._event(e.value) for e in due])
            store = self.store
            if store is None:
                break
            await asyncio.to_thread(store.delete_many, NS_WINDOWS, [e.key for e in due])
            emitted += len(due)
            self.emitted += len(due)
            if len(due) < EMIT_BATCH:
                break
        return emitted

    async def _closer(self) -> None:
        while not self._stopping:
            try:
                await self.close_due()
                self.close_error = None
            except Exception as exc:
                # The windows stay in the store (closing): the next pass emits them again with the same ids.
                self.close_error = f"{type(exc).__name__}: {exc}"
                self.log.warning("aggregate %s: could not emit closed windows (will retry): %s", self.id, exc)
            self.passes += 1
            if self._stopping:
                break
            self._sleeping = True
            try:
                await self.ctx.clock.sleep(self.interval)
            finally:
                self._sleeping = False
