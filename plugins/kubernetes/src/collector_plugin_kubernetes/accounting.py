"""Pure accounting of what ran: pods, nodes and volumes, quantity x seconds per window.

No I/O here.  The functions take the objects as the API server sends them
(JSON dicts with camelCase keys); an informer feeds them in, and the receiver
asks, per window ``[start, end)``, how many seconds each object was running
(pods) or existed (nodes, volumes).  Billed quantity = resources x seconds.

The rules (what counts as running, deletion, restarts, bounded memory) are
documented for users in docs/components/kubernetes-accounting.md; keep the two
in step.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from collector_plugin_kubernetes.quantity import parse_quantity

__all__ = [
    "MAX_RUNS",
    "CapacityUsage",
    "PodUsage",
    "Resources",
    "effective_resources",
    "merge",
    "parse_time",
    "run_intervals",
]

Resources = dict[str, float]
"""Resource name -> amount: cpu in cores, memory and storage in bytes, extended resources as counts."""

Interval = tuple[float, float | None]
"""A run ``[start, end)`` in unix seconds; ``end`` None while it is still running."""

MAX_RUNS = 64
"""Most closed runs a :class:`PodUsage` keeps; beyond it the two oldest are joined (see the docs)."""

_TERMINAL_PHASES = ("Succeeded", "Failed")
_INF = float("inf")

# ---------------------------------------------------------------------------------------------- times

_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?(?:([Zz])|([+-])(\d{2}):(\d{2}))",
)


def parse_time(value: str) -> float:
    """An RFC 3339 timestamp (``2026-12-06T10:00:00Z``, fractions, ``+01:00``) as unix seconds.

    Written out rather than ``datetime.fromisoformat`` so that any number of
    fractional digits (MicroTime has 6, other producers 9) is accepted.
    """
    match = _RFC3339.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"invalid RFC 3339 timestamp {value!r} (expected e.g. 2026-12-06T10:00:00Z)")
    year, month, day, hour, minute, second = (int(match[i]) for i in range(1, 7))
    try:  # validates the calendar (no 31 February); a leap second 60 is allowed and rolls over
        datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError as exc:
        raise ValueError(f"invalid RFC 3339 timestamp {value!r}: {exc}") from None
    if second > 60:
        raise ValueError(f"invalid RFC 3339 timestamp {value!r}: second out of range")
    seconds = calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))
    if match[9]:
        offset = int(match[10]) * 3600 + int(match[11]) * 60
        seconds -= offset if match[9] == "+" else -offset
    return seconds + (float(match[7]) if match[7] else 0.0)


def _time(value: object) -> float | None:
    """A timestamp field that may be absent (``None``) or empty."""
    return parse_time(value) if isinstance(value, str) and value else None


# ------------------------------------------------------------------------------------------ resources


def effective_resources(pod: Mapping[str, Any], which: Literal["requests", "limits"]) -> Resources:
    """The pod's effective requests (or limits), per resource, as Kubernetes computes them.

    Per resource: ``max(sum over app containers and sidecars, max over init
    containers i of (i + sidecars declared before i)) + spec.overhead``, where
    pod-level ``spec.resources`` replaces the container aggregate when set for
    that resource.  A container's missing request defaults to its limit; for
    limits, a container without a limit adds nothing, and overhead is added
    only to resources that have a limit (as the kubelet's ``PodLimits`` does).
    """
    spec = pod.get("spec") or {}
    aggregate: dict[str, Decimal] = {}
    for container in spec.get("containers") or ():
        _add(aggregate, _container_resources(container, which))
    sidecars: dict[str, Decimal] = {}
    init_max: dict[str, Decimal] = {}
    for container in spec.get("initContainers") or ():
        own = _container_resources(container, which)
        if container.get("restartPolicy") == "Always":
            # A sidecar runs beside everything after it: it adds to the app sum and to later init steps.
            _add(aggregate, own)
            _add(sidecars, own)
            step = dict(sidecars)
        else:
            step = dict(own)
            _add(step, sidecars)
        for name, amount in step.items():
            if amount > init_max.get(name, Decimal(0)):
                init_max[name] = amount
    for name, amount in init_max.items():
        if amount > aggregate.get(name, Decimal(0)):
            aggregate[name] = amount
    pod_level = spec.get("resources") or {}
    for name, amount in _quantities(pod_level.get(which)).items():
        aggregate[name] = amount
    if which == "requests":
        # Pod-level defaulting: a pod-level limit without a request stands for the request when no
        # container asks for that resource.
        for name, amount in _quantities(pod_level.get("limits")).items():
            aggregate.setdefault(name, amount)
    for name, amount in _quantities(spec.get("overhead")).items():
        if which == "requests" or name in aggregate:
            aggregate[name] = aggregate.get(name, Decimal(0)) + amount
    return {name: float(amount) for name, amount in aggregate.items()}


def _container_resources(container: Mapping[str, Any], which: str) -> dict[str, Decimal]:
    resources = container.get("resources") or {}
    amounts = _quantities(resources.get(which))
    if which == "requests":
        for name, amount in _quantities(resources.get("limits")).items():
            amounts.setdefault(name, amount)  # the API server defaults a missing request to the limit
    return amounts


def _quantities(values: object) -> dict[str, Decimal]:
    if not isinstance(values, Mapping):
        return {}
    return {str(name): parse_quantity(amount) for name, amount in values.items()}


def _add(total: dict[str, Decimal], more: Mapping[str, Decimal]) -> None:
    for name, amount in more.items():
        total[name] = total.get(name, Decimal(0)) + amount


def _capacity(values: object) -> Resources:
    if isinstance(values, Mapping):
        values = {name: amount for name, amount in values.items() if amount is not None}
    return {name: float(amount) for name, amount in _quantities(values).items()}


# ------------------------------------------------------------------------------------------ intervals


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """Union of intervals: sorted, overlapping or touching ones joined, empty ones dropped."""
    ordered = sorted(
        ((start, end) for start, end in intervals if end is None or end > start),
        key=lambda run: run[0],
    )
    merged: list[Interval] = []
    for start, end in ordered:
        if merged:
            last_start, last_end = merged[-1]
            if last_end is None:
                continue  # an open run covers everything after its start
            if start <= last_end:
                merged[-1] = (last_start, None if end is None else max(last_end, end))
                continue
        merged.append((start, end))
    return merged


def _container_runs(pod: Mapping[str, Any]) -> Iterable[tuple[str, Interval]]:
    """(container key, run) for every run visible on the pod; ephemeral containers excluded."""
    status = pod.get("status") or {}
    for group in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(group) or ():
            key = f"{group}/{container.get('name', '')}"
            for state_name in ("state", "lastState"):
                state = container.get(state_name) or {}
                running = state.get("running")
                if isinstance(running, Mapping):
                    start = _time(running.get("startedAt"))
                    if start is not None:
                        yield key, (start, None)
                terminated = state.get("terminated")
                if isinstance(terminated, Mapping):
                    start = _time(terminated.get("startedAt"))
                    finish = _time(terminated.get("finishedAt"))
                    if start is not None and finish is not None:  # no startedAt: it never started
                        yield key, (start, finish)


def run_intervals(pod: Mapping[str, Any]) -> list[Interval]:
    """The merged runs of all the pod's containers (init, sidecar, app) visible on this version."""
    return merge(run for _, run in _container_runs(pod))


def _overlap(start: float, end: float, runs: Iterable[Interval], stop: float) -> float:
    """Seconds of ``runs`` inside ``[start, end)``; open runs end at ``stop``."""
    total = 0.0
    for run_start, run_end in runs:
        lo = max(run_start, start)
        hi = min(stop if run_end is None else run_end, end)
        if hi > lo:
            total += hi - lo
    return total


# ------------------------------------------------------------------------------------------------ pods


@dataclass(slots=True)
class PodUsage:
    """What the tracker keeps per pod: identity, resources, and the union of its containers' runs.

    ``runs`` is kept merged and capped (:data:`MAX_RUNS` closed runs).  Open
    runs are also remembered per container (``open_runs``) so that a newer
    version that shows the container restarted closes the old run.
    """

    uid: str
    namespace: str
    name: str
    node: str | None
    phase: str
    labels: dict[str, str]
    annotations: dict[str, str]
    requests: Resources
    limits: Resources
    runs: list[Interval] = field(default_factory=list)
    deleted_at: float | None = None
    open_runs: dict[str, float] = field(default_factory=dict)
    closed_runs: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> PodUsage:
        """Start tracking a pod from its first version seen (a list item or an ADDED event)."""
        usage = cls(
            uid="", namespace="", name="", node=None, phase="", labels={}, annotations={}, requests={}, limits={}
        )
        usage.update(pod)
        return usage

    def update(self, pod: Mapping[str, Any]) -> None:
        """Merge a newer version: its runs are added to those known; metadata and resources replaced."""
        meta = pod.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            raise ValueError(f"pod {meta.get('namespace')}/{meta.get('name')} has no metadata.uid")
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        self.uid = str(uid)
        self.namespace = str(meta.get("namespace") or "")
        self.name = str(meta.get("name") or "")
        self.node = spec.get("nodeName") or None
        self.phase = str(status.get("phase") or "Pending")
        self.labels = dict(meta.get("labels") or {})
        self.annotations = dict(meta.get("annotations") or {})
        self.requests = effective_resources(pod, "requests")
        self.limits = effective_resources(pod, "limits")
        deletion = _time(meta.get("deletionTimestamp"))
        if deletion is not None:
            self.deleted_at = deletion if self.deleted_at is None else min(self.deleted_at, deletion)

        seen = list(_container_runs(pod))
        closed = [(start, end) for _, (start, end) in seen if end is not None]
        starts_by_key: dict[str, list[float]] = {}
        now_open: dict[str, float] = {}
        for key, (start, end) in seen:
            starts_by_key.setdefault(key, []).append(start)
            if end is None:
                now_open[key] = start
        ended_terminal: float | None = None
        if self.phase in _TERMINAL_PHASES:
            # A finished pod runs nothing, whatever stale container state it still shows.
            ended_terminal = _latest_time_on(pod)
        for key, start in self.open_runs.items():
            if now_open.get(key) == start:
                continue
            if any(s == start for s in starts_by_key.get(key, ())):
                continue  # now shown terminated, with its real finishedAt, in ``closed``
            later = [s for s in starts_by_key.get(key, ()) if s > start]
            if later:
                # The run ended unseen (a relist after missed events): it ended by the next start at the latest.
                closed.append((start, min(later)))
            else:
                # Not shown on this version (or shown waiting without its end): keep it open until the
                # container's next start, the pod's finish or its deletion closes it.
                now_open.setdefault(key, start)
        if ended_terminal is not None:
            for start in now_open.values():
                closed.append((start, max(start, ended_terminal)))
            now_open = {}
        self.open_runs = now_open
        self._add_closed(closed)

    def mark_deleted(self, pod: Mapping[str, Any], at: float) -> None:
        """The pod object is gone (``at``: when that was observed); ``pod`` is its last known version.

        Containers still shown running stop at the pod's deletionTimestamp,
        or at ``at`` if that is earlier or there is none.  ``pod`` may be ``{}``
        when the deletion was noticed as an absence from a relist.
        """
        if _uid(pod):
            self.update(pod)
        self.deleted_at = at if self.deleted_at is None else min(self.deleted_at, at)
        stop = self.deleted_at
        still_open, self.open_runs = self.open_runs, {}
        self._add_closed([(start, max(start, stop)) for start in still_open.values()])

    def seconds_in(self, start: float, end: float) -> float:
        """Running seconds inside ``[start, end)``: open runs count up to the window end (or the deletion)."""
        if end <= start:
            return 0.0
        stop = _INF if self.deleted_at is None else self.deleted_at
        return _overlap(start, end, self.runs, stop)

    def ended_at(self) -> float | None:
        """When the pod stopped accruing time, for pruning; None while it runs or may still start.

        A pod that finished (or was deleted) without ever running gives ``-inf``.
        """
        if self.open_runs:
            if self.deleted_at is None:
                return None
            # Running, but capped by the deletion deadline.
            return max(self.deleted_at, self.closed_runs[-1][1]) if self.closed_runs else self.deleted_at
        if self.closed_runs:
            return self.closed_runs[-1][1]
        if self.deleted_at is not None or self.phase in _TERMINAL_PHASES:
            return -_INF
        return None

    def forget_before(self, moment: float) -> None:
        """Drop closed runs that ended at or before ``moment`` (the watermark: already billed), so a
        long-lived pod that restarts often keeps only the runs of windows still to come."""
        kept = [(start, end) for start, end in self.closed_runs if end > moment]
        if len(kept) != len(self.closed_runs):
            self.closed_runs = kept
            self.runs = merge([*kept, *((start, None) for start in self.open_runs.values())])

    def _add_closed(self, closed: Iterable[tuple[float, float]]) -> None:
        runs: list[tuple[float, float]] = []
        for start, end in merge([*self.closed_runs, *closed]):
            assert end is not None  # only closed runs were merged
            runs.append((start, end))
        while len(runs) > MAX_RUNS:
            # Bounded memory: join the two oldest runs (their gap becomes billed, see the docs).
            runs[0:2] = [(runs[0][0], runs[1][1])]
        self.closed_runs = runs
        self.runs = merge([*runs, *((start, None) for start in self.open_runs.values())])


def _latest_time_on(pod: Mapping[str, Any]) -> float | None:
    """The latest finishedAt or condition transition on a pod: when a finished pod was last seen running."""
    times = [end for _, (_, end) in _container_runs(pod) if end is not None]
    for condition in (pod.get("status") or {}).get("conditions") or ():
        moment = _time(condition.get("lastTransitionTime"))
        if moment is not None:
            times.append(moment)
    return max(times) if times else None


# ----------------------------------------------------------------------------- nodes, PVs and PVCs

CapacityKind = Literal["node", "persistentvolume", "persistentvolumeclaim"]
_KINDS = ("node", "persistentvolume", "persistentvolumeclaim")


@dataclass(slots=True)
class CapacityUsage:
    """A node, PersistentVolume or PersistentVolumeClaim: capacity billed while it exists.

    ``[since, until)`` is the billed span: creation to deletion for nodes and
    PVs; for a claim, while it is Bound (from creation if first seen Bound,
    otherwise from when Bound was first observed) until deletion or until it
    leaves Bound.  ``since`` None: never billed (a claim never seen Bound).
    """

    kind: str
    uid: str
    namespace: str | None
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    capacity: Resources
    since: float | None
    until: float | None

    @classmethod
    def from_object(cls, kind: str, obj: Mapping[str, Any], observed_at: float) -> CapacityUsage:
        """Start tracking an object first seen at ``observed_at`` (a list item or an ADDED event)."""
        if kind not in _KINDS:
            raise ValueError(f"unknown kind {kind!r} (expected one of {', '.join(_KINDS)})")
        meta = obj.get("metadata") or {}
        usage = cls(kind, "", None, "", {}, {}, {}, None, None)
        if kind != "persistentvolumeclaim" or _phase(obj) == "Bound":
            usage.since = _time(meta.get("creationTimestamp"))
            if usage.since is None:
                usage.since = observed_at
        usage.update(obj, observed_at)
        return usage

    def update(self, obj: Mapping[str, Any], observed_at: float) -> None:
        """Take a newer version seen at ``observed_at``: metadata and capacity replaced, span extended."""
        meta = obj.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            raise ValueError(f"{self.kind} {meta.get('name')} has no metadata.uid")
        self.uid = str(uid)
        self.namespace = meta.get("namespace") or None
        self.name = str(meta.get("name") or "")
        self.labels = dict(meta.get("labels") or {})
        self.annotations = dict(meta.get("annotations") or {})
        if self.kind == "node":
            self.capacity = _capacity((obj.get("status") or {}).get("capacity"))
        elif self.kind == "persistentvolume":
            self.capacity = _capacity({"storage": ((obj.get("spec") or {}).get("capacity") or {}).get("storage")})
        else:
            storage = ((obj.get("status") or {}).get("capacity") or {}).get("storage")
            self.capacity = _capacity({"storage": storage})
            bound = _phase(obj) == "Bound"
            if bound and self.since is None:
                self.since = observed_at
            elif not bound and self.since is not None and self.until is None:
                self.until = max(self.since, observed_at)  # Lost (or released): billing stops
        deletion = _time(meta.get("deletionTimestamp"))
        if deletion is not None and self.since is not None:
            self._stop(deletion)

    def mark_deleted(self, obj: Mapping[str, Any], at: float) -> None:
        """The object is gone (``at``: when observed); billing stops at its deletionTimestamp or ``at``.

        ``obj`` is its last known version, or ``{}`` when the deletion was noticed as an absence from a relist.
        """
        if _uid(obj):
            self.update(obj, at)
        if self.since is not None:
            self._stop(at)

    def seconds_in(self, start: float, end: float) -> float:
        """Seconds of ``[since, until)`` inside ``[start, end)``; an open span counts to the window end."""
        if self.since is None or end <= start:
            return 0.0
        return _overlap(start, end, [(self.since, self.until)], _INF)

    def ended_at(self) -> float | None:
        """When billing stopped, for pruning; None while it goes on (or has not started)."""
        return self.until

    def _stop(self, moment: float) -> None:
        assert self.since is not None
        moment = max(self.since, moment)
        self.until = moment if self.until is None else min(self.until, moment)


def _uid(obj: Mapping[str, Any]) -> str | None:
    return (obj.get("metadata") or {}).get("uid") or None


def _phase(obj: Mapping[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or "")
