"""Cumulative metric points into deltas, exactly once across restarts.

A CUMULATIVE sum (or histogram, or summary) says "so much since
``start_time``".  Usage is the difference between consecutive points of one
series, so the receiver keeps the last point of every series in a
:class:`~collector.state.StateStore` (``otlp-delta.sqlite`` in its storage
directory) and emits, per point:

* a series never seen: its whole value (``initial_value: keep``) or nothing
  (``drop``: it only becomes the baseline);
* a point not newer than the last one (a re-sent export, a stale point):
  nothing;
* ``start_time`` changed, or a monotonic value went down: the counter was
  reset, and its new value is the delta;
* otherwise: the difference, with ``start_time`` = the previous point's time.

Atomicity.  The state of a series must advance exactly when its delta is
committed, but the queue and the state store are two files, so a crash can
fall between the two commits.  The order used here makes that window harmless:

1. the series of a request are *held* (a concurrent export of the same series
   waits), their entries read, the deltas computed;
2. the new entries are written *before* the commit, each holding the record it
   produced and the id of this process's run;
3. the records are committed (``emit``);
4. series whose records the pipeline refused get their previous entry back;
   if the call failed otherwise, its outcome is unknown (with several
   exporters one queue may have committed) and the series are *in doubt*.

A process that stops cleanly deletes its run marker; one that crashes leaves
it.  An entry written by a crashed run is *in doubt*: its record may or may
not have been committed.  The next time its series is seen the stored record
is emitted again, unchanged, before the new delta.  If it had been committed,
the destination drops the copy: the docs ask mappings to derive the event id
from ``series`` and ``time``, so the copy has the same id (OpenMeter
deduplicates on ``source`` + ``id``).  If it had not, this is its first
commit.  Either way the usage between the two points counts once.

Bounds.  The state holds at most ``max_series`` series.  A point of a series
not in the state when it is full is *refused*: nothing is emitted for it and
the state does not change (:attr:`Plan.refused`; the receiver reports it as
rejected, counts it and logs it).  Nothing of it is lost for good as long as
the series comes back once there is room: its first point then counts its
whole cumulative value (``initial_value: keep``), the refused interval
included.  A series not seen for ``series_ttl`` of the collector's running
time is forgotten (its entry expires and is purged, bounded work per export),
which makes room.  Running time, not wall time: for the first ``series_ttl``
after the state is opened nothing expires, so a collector stopped for longer
than the TTL does not forget the series it will see again (forgetting a live
series would count its whole cumulative value a second time).  The WAL is
truncated back to ``WAL_LIMIT_BYTES`` after a checkpoint, so a burst of new
series leaves no large file behind.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.api import StateStore
from collector_plugin_otlp.config import DEFAULT_MAX_SERIES, DEFAULT_SERIES_TTL
from collector_plugin_otlp.records import MetricPoint, rfc3339

STATE_FILE = "otlp-delta.sqlite"
NS_SERIES = "series"
NS_RUNS = "runs"
PURGE_LIMIT = 1000  # expired series deleted per export at most (bounded work)
#: the WAL is truncated back to this after a checkpoint (SQLite checkpoints every 1000 pages, ~4 MiB)
WAL_LIMIT_BYTES = 4 * 1024 * 1024
PURGE_INTERVAL = 60.0  # seconds of the collector's clock between purges while there is room


def _limit_wal(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")


@dataclass(slots=True)
class Step:
    """One change to a series: the record it emitted (index into the plan's records, or None) and the entry after."""

    record: int | None
    entry: dict[str, Any]


@dataclass
class Plan:
    """What one export emits, and how the series it touches move."""

    records: list[dict[str, Any]] = field(default_factory=list)
    origins: list[int | None] = field(default_factory=list)  # data point ordinal per record; None for replays
    before: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    steps: dict[str, list[Step]] = field(default_factory=dict)
    refused: list[int] = field(default_factory=list)  # data point ordinals of series refused (state full)
    refused_series: int = 0  # how many distinct series those points belong to
    reserved: int = 0  # new series this plan counted in DeltaState.series before writing them

    def add(self, record: dict[str, Any], origin: int | None) -> int:
        self.records.append(record)
        self.origins.append(origin)
        return len(self.records) - 1


class DeltaState:
    """The per-series state of one receiver (blocking: call from a thread)."""

    def __init__(
        self,
        storage_dir: Path,
        *,
        initial_value: str = "keep",
        series_ttl: float | None = DEFAULT_SERIES_TTL,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        if max_series <= 0:
            raise ValueError("max_series must be positive")
        self.path = Path(storage_dir) / STATE_FILE
        self.initial_value = initial_value
        self.series_ttl = series_ttl
        self.max_series = max_series
        self.run = uuid.uuid4().hex
        self.store: StateStore | None = None
        self.crashed: set[str] = set()  # runs that did not stop cleanly: their entries are in doubt
        self.doubt: set[str] = set()  # series of this run whose last commit's outcome is unknown
        # Series in the state file, plus those planned and not yet written (reservations).  Plans
        # are made on the event loop, writes in threads: the lock keeps the count exact.
        self.series = 0
        self._count_lock = threading.Lock()
        self._expiry_from = 0.0  # nothing expires before this (the collector's time): see "Bounds"
        self._next_purge = 0.0

    # -- lifecycle (blocking) ----------------------------------------------------------------

    def open(self, now: float) -> None:
        self.store = StateStore(self.path, on_connect=_limit_wal)
        with self.store.transaction() as tx:
            self.crashed = {e.key for e in tx.items(NS_RUNS)}
            tx.put(NS_RUNS, self.run, {"started": now})
            self.series = tx.count(NS_SERIES)
        self._expiry_from = now + (self.series_ttl or 0.0)
        self._next_purge = self._expiry_from

    def close(self, *, clean: bool) -> None:
        if self.store is None:
            return
        if clean and not self.doubt:
            self.store.delete(NS_RUNS, self.run)
        self.store.close()
        self.store = None

    def _expiring(self, now: float) -> bool:
        return bool(self.series_ttl) and now >= self._expiry_from

    def _count(self, change: int) -> None:
        with self._count_lock:
            self.series += change

    # -- one export --------------------------------------------------------------------------

    def read(self, keys: Iterable[str], now: float) -> dict[str, Any]:
        """The live entries of ``keys``; first purges expired series when due (or when the state is full)."""
        assert self.store is not None
        if not self._expiring(now):
            return self.store.get_many(NS_SERIES, keys)
        if now >= self._next_purge or self.series >= self.max_series:
            with self.store.transaction() as tx:
                purged = tx.purge_expired(now, limit=PURGE_LIMIT)
            self._count(-purged)
            self._next_purge = now + PURGE_INTERVAL
        return self.store.get_many(NS_SERIES, keys, now=now)

    def plan(self, points: list[MetricPoint], stored: dict[str, Any]) -> Plan:
        """The records to emit for ``points`` (in request order) given the ``stored`` entries of their series."""
        plan = Plan()
        working: dict[str, dict[str, Any] | None] = {}
        refused: set[str] = set()
        for p in points:
            if not p.cumulative:
                plan.add(p.record, p.index)
                continue
            key = p.series
            if key in refused:
                plan.refused.append(p.index)
                continue
            if key not in working:
                entry = stored.get(key)
                if entry is None and not self._reserve():
                    refused.add(key)
                    plan.refused.append(p.index)
                    continue
                if entry is None:
                    plan.reserved += 1
                plan.before[key] = entry
                plan.steps[key] = []
                if entry is not None and self._in_doubt(key, entry):
                    # Emit the stored record again (same content, same id) and trust the entry from now on.
                    entry = {**entry, "run": self.run}
                    replay = plan.add(entry["rec"], None) if entry.get("rec") is not None else None
                    plan.steps[key].append(Step(replay, entry))
                working[key] = entry
            record, entry = self._delta(p, working[key])
            if entry is None:
                continue  # not newer than what was already counted
            index = plan.add(record, p.index) if record is not None else None
            plan.steps[key].append(Step(index, entry))
            working[key] = entry
        plan.refused_series = len(refused)
        return plan

    def _reserve(self) -> bool:
        """Count one more series if there is room (a series not in the state); False when full."""
        with self._count_lock:
            if self.series >= self.max_series:
                return False
            self.series += 1
            return True

    def _in_doubt(self, key: str, entry: dict[str, Any]) -> bool:
        return entry.get("run") in self.crashed or key in self.doubt

    def _delta(
        self, p: MetricPoint, last: dict[str, Any] | None
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The record for point ``p`` after ``last`` (None: nothing to emit), and the series' next entry
        (None: the point is not newer, nothing changes)."""
        values = list(p.values)
        if last is None:
            reset, start = True, p.record["start_time"]
            if self.initial_value == "drop":
                return None, self._entry(p, values, None)
        elif p.time <= last["t"]:
            return None, None
        elif p.start != last["s"] or (p.monotonic and _decreased(values, last["v"])):
            reset, start = True, p.record["start_time"] or rfc3339(last["t"])
        else:
            reset, start = False, rfc3339(last["t"])
        record = {**p.record, "temporality": "delta", "start_time": start}
        if not reset:
            delta = [_sub(a, b) for a, b in zip(values, last["v"], strict=False)]  # type: ignore[index]
            if record["type"] == "sum":
                record["value"] = delta[0]
            else:
                record["count"], record["sum"] = delta[0], delta[1]
        return record, self._entry(p, values, record)

    def _entry(self, p: MetricPoint, values: list[Any], record: dict[str, Any] | None) -> dict[str, Any]:
        return {"t": p.time, "s": p.start, "v": values, "run": self.run, "rec": record}

    def write(self, plan: Plan, now: float) -> None:
        """Step 2: the entries after every step, before the commit (one transaction)."""
        assert self.store is not None
        items = [(key, steps[-1].entry, self._expires(now)) for key, steps in plan.steps.items() if steps]
        # The series planned as new were counted already (reservations); count what was really added.
        inserted = 0
        try:
            if items:
                with self.store.transaction() as tx:
                    before = tx.count()
                    tx.put_many(NS_SERIES, items)
                    inserted = tx.count() - before  # an expired entry not yet purged is replaced, not added
        finally:
            self._count(inserted - plan.reserved)
            plan.reserved = 0

    def settle(self, plan: Plan, rejected: set[int] | None, now: float) -> None:
        """Step 4: series whose last step was not committed go back to their last committed entry.

        ``rejected``: indexes of records the pipeline refused (the rest were
        committed); None when the call failed as a whole (nothing committed).
        """
        assert self.store is not None
        restore: list[tuple[str, dict[str, Any] | None]] = []
        advanced: list[str] = []
        for key, steps in plan.steps.items():
            if not steps:
                continue
            final = plan.before[key]
            if rejected is not None:
                for step in steps:
                    if step.record is None or step.record not in rejected:
                        final = step.entry
            if final is not plan.before[key]:
                advanced.append(key)
            if final is not steps[-1].entry:
                restore.append((key, final))
        if restore:
            try:
                with self.store.transaction() as tx:
                    tx.put_many(NS_SERIES, [(k, e, self._expires(now)) for k, e in restore if e is not None])
                    deleted = tx.delete_many(NS_SERIES, [k for k, e in restore if e is None])
                self._count(-deleted)  # new series whose records were not committed give their place back
            except Exception:
                # The entries written before the commit stay; their records may
                # not be committed: replay them when the series comes back.
                self.doubt.update(k for k, _ in restore)
                raise
        self.doubt.difference_update(advanced)  # committed past the entry that was in doubt

    def mark_in_doubt(self, plan: Plan) -> None:
        """The commit's outcome is unknown (cancelled, crashed thread): replay these series' records later."""
        self.doubt.update(k for k, steps in plan.steps.items() if steps)

    def _expires(self, now: float) -> float | None:
        return now + self.series_ttl if self.series_ttl else None


def _decreased(values: list[Any], last: list[Any]) -> bool:
    first, previous = values[0], last[0] if last else None
    return first is not None and previous is not None and first < previous


def _sub(a: Any, b: Any) -> Any:
    if a is None or b is None:
        return a
    return a - b
