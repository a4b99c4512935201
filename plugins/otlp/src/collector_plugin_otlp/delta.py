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
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from collector.api import StateStore
from collector_plugin_otlp.records import MetricPoint, rfc3339

STATE_FILE = "otlp-delta.sqlite"
NS_SERIES = "series"
NS_RUNS = "runs"
PURGE_LIMIT = 1000


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

    def add(self, record: dict[str, Any], origin: int | None) -> int:
        self.records.append(record)
        self.origins.append(origin)
        return len(self.records) - 1


class DeltaState:
    """The per-series state of one receiver (blocking: call from a thread)."""

    def __init__(self, storage_dir: Path, *, initial_value: str = "keep", series_ttl: float | None = None) -> None:
        self.path = Path(storage_dir) / STATE_FILE
        self.initial_value = initial_value
        self.series_ttl = series_ttl
        self.run = uuid.uuid4().hex
        self.store: StateStore | None = None
        self.crashed: set[str] = set()  # runs that did not stop cleanly: their entries are in doubt
        self.doubt: set[str] = set()  # series of this run whose last commit's outcome is unknown

    # -- lifecycle (blocking) ----------------------------------------------------------------

    def open(self, now: float) -> None:
        self.store = StateStore(self.path)
        with self.store.transaction() as tx:
            self.crashed = {e.key for e in tx.items(NS_RUNS)}
            tx.put(NS_RUNS, self.run, {"started": now})

    def close(self, *, clean: bool) -> None:
        if self.store is None:
            return
        if clean and not self.doubt:
            self.store.delete(NS_RUNS, self.run)
        self.store.close()
        self.store = None

    # -- one export --------------------------------------------------------------------------

    def read(self, keys: Iterable[str], now: float) -> dict[str, Any]:
        assert self.store is not None
        return self.store.get_many(NS_SERIES, keys, now=now if self.series_ttl else None)

    def plan(self, points: list[MetricPoint], stored: dict[str, Any]) -> Plan:
        """The records to emit for ``points`` (in request order) given the ``stored`` entries of their series."""
        plan = Plan()
        working: dict[str, dict[str, Any] | None] = {}
        for p in points:
            if not p.cumulative:
                plan.add(p.record, p.index)
                continue
            key = p.series
            if key not in working:
                entry = stored.get(key)
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
        return plan

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
        if not items:
            return
        with self.store.transaction() as tx:
            tx.put_many(NS_SERIES, items)
            if self.series_ttl:
                tx.purge_expired(now, limit=PURGE_LIMIT)

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
                    tx.delete_many(NS_SERIES, [k for k, e in restore if e is None])
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
