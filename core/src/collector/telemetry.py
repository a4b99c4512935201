"""The collector's own metrics and logs.

Metrics live in a per-service ``CollectorRegistry`` (not prometheus-client's
global one) so that several services can run in one process, as the tests do.

The counters reconcile, per exporter::

    collector_exporter_enqueued_events_total
        = collector_exporter_delivered_events_total
        + collector_exporter_dead_lettered_events_total   (all reasons)
        + collector_queue_events                          (waiting, in flight included)

and per receiver::

    collector_receiver_received_events_total
        = collector_receiver_accepted_events_total
        + collector_receiver_refused_events_total         (client told: 4xx/5xx)

    accepted events enter every pipeline; per pipeline they are either
    dropped by a processor (collector_processor_dropped_events_total{reason})
    or enqueued to each of the pipeline's exporters.

The names from the product documentation (``batch_created``, ``batch_sent``,
``buffer_batch_received``, ``buffer_batch_sent``, ``buffer_latency_ns``) are
kept as they are, beside the ``collector_*`` family.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from collector.metrics import Meter


@dataclass(frozen=True)
class ExporterGauges:
    """One exporter's gauges at one moment, as its runner reads them from memory."""

    queue_events: int  # waiting or in flight, not yet delivered or dead-lettered
    queue_bytes: int
    queue_oldest_age_s: float
    queue_refusing: bool
    queue_quarantined: int
    in_flight_events: int
    paused: bool
    dead_letter_events: int
    queue_salvaged: int = 0  # events salvaged from damaged queue files since start
    queue_max_bytes: int = 0  # the configured limit: dashboards and alerts show queue_bytes against it


_EXPORTER_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("collector_queue_events", "Events in the queue, in flight included.", "queue_events"),
    ("collector_queue_bytes", "Serialised bytes in the queue.", "queue_bytes"),
    ("collector_queue_max_bytes", "The queue's max_bytes: above it, new data is refused.", "queue_max_bytes"),
    ("collector_queue_oldest_age_seconds", "Age of the oldest queued event.", "queue_oldest_age_s"),
    ("collector_queue_refusing", "1 while the queue refuses new data (full or disk full).", "queue_refusing"),
    ("collector_exporter_in_flight_events", "Events taken from the queue and not yet finished.", "in_flight_events"),
    ("collector_exporter_paused", "1 while the exporter is paused on an authentication error.", "paused"),
    ("collector_dead_letter_events", "Events in the dead-letter store.", "dead_letter_events"),
)

# Counters since start, read from memory at scrape time like the gauges (the ``_total`` suffix is added).
_EXPORTER_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("collector_queue_salvaged_events", "Events salvaged from damaged queue files.", "queue_salvaged"),
    (
        "collector_queue_quarantined_items",
        "Unreadable queue items set aside (damaged rows included).",
        "queue_quarantined",
    ),
)


def combine_gauges(parts: list[ExporterGauges]) -> ExporterGauges:
    """One exporter's gauges over several queues (its worker shards, docs/operations.md "Worker processes"):
    counts and bytes add up, the oldest age is the oldest, refusing and paused if any one is."""
    if len(parts) == 1:
        return parts[0]
    return ExporterGauges(
        queue_events=sum(p.queue_events for p in parts),
        queue_bytes=sum(p.queue_bytes for p in parts),
        queue_oldest_age_s=max(p.queue_oldest_age_s for p in parts),
        queue_refusing=any(p.queue_refusing for p in parts),
        queue_quarantined=sum(p.queue_quarantined for p in parts),
        in_flight_events=sum(p.in_flight_events for p in parts),
        paused=any(p.paused for p in parts),
        dead_letter_events=sum(p.dead_letter_events for p in parts),
        queue_salvaged=sum(p.queue_salvaged for p in parts),
        queue_max_bytes=sum(p.queue_max_bytes for p in parts),
    )


class ExporterGaugeCollector(Collector):
    """Per-exporter gauges computed at scrape time.

    Each exporter's runner registers a function that reads its counters from
    memory (docs/operations.md, "Metrics"); a scrape calls it, so the values
    are current without anyone refreshing them, and no scrape runs a query on
    an event loop.  A source that fails is left out of that scrape.  An
    exporter may have several sources (the primary process drains shards that
    no worker runs any more): they are combined (:func:`combine_gauges`).
    """

    def __init__(self) -> None:
        self._sources: dict[str, list[Callable[[], ExporterGauges]]] = {}
        self._lock = threading.Lock()

    def watch(self, exporter_id: str, read: Callable[[], ExporterGauges]) -> None:
        with self._lock:
            self._sources.setdefault(exporter_id, []).append(read)

    def unwatch(self, exporter_id: str, read: Callable[[], ExporterGauges] | None = None) -> None:
        """Stop reading ``read`` (every source of the exporter when None)."""
        with self._lock:
            sources = self._sources.get(exporter_id, [])
            if read is not None and read in sources:
                sources.remove(read)
            if read is None or not sources:
                self._sources.pop(exporter_id, None)

    def describe(self) -> Iterable[Metric]:
        return [
            *(GaugeMetricFamily(name, doc, labels=["exporter"]) for name, doc, _ in _EXPORTER_GAUGES),
            *(CounterMetricFamily(name, doc, labels=["exporter"]) for name, doc, _ in _EXPORTER_COUNTERS),
        ]

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            sources = [(eid, list(reads)) for eid, reads in self._sources.items()]
        families: list[tuple[GaugeMetricFamily | CounterMetricFamily, str]] = [
            (GaugeMetricFamily(name, doc, labels=["exporter"]), attr) for name, doc, attr in _EXPORTER_GAUGES
        ]
        families += [
            (CounterMetricFamily(name, doc, labels=["exporter"]), attr) for name, doc, attr in _EXPORTER_COUNTERS
        ]
        for exporter_id, reads in sources:
            parts = []
            for read in reads:
                try:
                    parts.append(read())
                except Exception:  # a scrape must not fail because one exporter is closing
                    logging.getLogger("collector.telemetry").debug(
                        "gauges of %s unreadable", exporter_id, exc_info=True
                    )
            if not parts:
                continue
            values = combine_gauges(parts)
            for family, attr in families:
                family.add_metric([exporter_id], float(getattr(values, attr)))
        return [family for family, _ in families]


def hot_inc(child: Any) -> Callable[..., None]:
    """``child.inc`` for a counter updated on every request, without its per-call checks.

    A labelled counter's ``inc`` checks the amount's sign and that the child is
    observable (~0.3 us) before adding under its lock; the hot paths pass counts
    that are never negative to a child resolved once, so they add under the
    lock directly (``_value`` is prometheus-client's, pinned below 1.0;
    core/tests/test_telemetry.py checks that the exported value moves).
    """
    value = getattr(child, "_value", None)
    add = getattr(value, "inc", None)
    return add if callable(add) else child.inc


class Metrics:
    """Every metric the core records, on one registry."""

    def __init__(self) -> None:
        # The *_created series double the output and no dashboard uses them.
        from prometheus_client import disable_created_metrics

        disable_created_metrics()
        r = self.registry = CollectorRegistry(auto_describe=True)
        # -- seed names, from the product documentation ---------------------
        self.batch_created = Counter("batch_created", "Request batches formed by senders.", ["exporter"], registry=r)
        self.batch_sent = Counter("batch_sent", "Request batches delivered.", ["exporter"], registry=r)
        self.buffer_batch_received = Counter(
            "buffer_batch_received", "Batches committed to a queue.", ["exporter"], registry=r
        )
        self.buffer_batch_sent = Counter(
            "buffer_batch_sent", "Batches read from a queue by the sender.", ["exporter"], registry=r
        )
        self.buffer_latency_ns = Histogram(
            "buffer_latency_ns",
            "Nanoseconds a batch waited in the queue before the sender took it.",
            ["exporter"],
            buckets=[1e5, 1e6, 1e7, 1e8, 5e8, 1e9, 5e9, 1e10, 6e10, 3e11, 3.6e12],
            registry=r,
        )
        # -- receivers --------------------------------------------------------
        self.received = Counter(
            "collector_receiver_received_events", "Events offered by clients or sources.", ["receiver"], registry=r
        )
        self.accepted = Counter(
            "collector_receiver_accepted_events", "Events committed to every target queue.", ["receiver"], registry=r
        )
        self.refused = Counter(
            "collector_receiver_refused_events",
            "Events refused at the edge (the client was told).",
            ["receiver", "reason"],
            registry=r,
        )
        self.requests = Counter(
            "collector_receiver_requests", "Requests answered, by status code.", ["receiver", "code"], registry=r
        )
        # -- processors ------------------------------------------------------
        self.dropped = Counter(
            "collector_processor_dropped_events",
            "Events a processor removed on purpose (filter, dedupe, aggregate...).",
            ["processor", "reason"],
            registry=r,
        )
        # -- exporters / queues ----------------------------------------------
        self.enqueued = Counter(
            "collector_exporter_enqueued_events", "Events committed to the exporter's queue.", ["exporter"], registry=r
        )
        self.delivered = Counter(
            "collector_exporter_delivered_events", "Events the destination accepted.", ["exporter"], registry=r
        )
        self.dead_lettered = Counter(
            "collector_exporter_dead_lettered_events",
            "Events moved to the dead-letter store.",
            ["exporter", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "collector_exporter_retries",
            "Failed send attempts that will be retried, by class.",
            ["exporter", "class"],
            registry=r,
        )
        self.send_latency = Histogram(
            "collector_exporter_request_seconds", "Duration of export requests.", ["exporter", "outcome"], registry=r
        )
        # Queue, in-flight, pause and dead-letter gauges are read when scraped.
        self.exporter_gauges = ExporterGaugeCollector()
        r.register(self.exporter_gauges)
        # -- pull receivers -----------------------------------------------------
        self.pull_duration = Histogram(
            "collector_pull_window_duration_seconds", "Time to collect one window.", ["receiver"], registry=r
        )
        self.pull_windows = Counter(
            "collector_pull_windows",
            "Windows collected, by outcome (failures are retried).",
            ["receiver", "outcome"],
            registry=r,
        )
        self.pull_last_success = Gauge(
            "collector_pull_last_success_timestamp_seconds",
            "Unix time of the last delivered window.",
            ["receiver"],
            registry=r,
        )
        self.pull_lag = Gauge(
            "collector_pull_lag_seconds", "How far the watermark is behind now.", ["receiver"], registry=r
        )
        self.pull_skipped = Counter(
            "collector_pull_skipped_windows",
            "Windows older than max_backfill, skipped and logged.",
            ["receiver"],
            registry=r,
        )
        self.leader = Gauge(
            "collector_leader", "1 while this replica leads the pull receiver.", ["receiver"], registry=r
        )
        # Read from the coordinator at scrape time (runtime.service), so it is never stale between windows.
        self.coordinator_leader = Gauge(
            "collector_coordinator_leader",
            "1 while this replica leads (its coordinator says so).",
            ["coordinator"],
            registry=r,
        )
        self.up = Gauge("collector_up", "1 while the service runs.", registry=r)
        self.start_time = Gauge("collector_start_time_seconds", "Unix time the service started.", registry=r)
        # Always 1; the labels say what runs (docs/operations.md#metrics): one series, plugins as "dist=version,...".
        self.build_info = Gauge(
            "collector_build_info",
            "1; labels: core version, Python, plugin versions.",
            ["version", "python", "plugins"],
            registry=r,
        )
        self.build_info.labels(*_build_labels()).set(1)
        # Set at start: queues left by exporters no longer configured (collector.runtime.orphans).
        self.orphaned_queue_events = Gauge(
            "collector_orphaned_queue_events",
            "Events in the queue of an exporter directory no configured exporter owns (renamed or removed).",
            ["queue"],
            registry=r,
        )


def _build_labels() -> tuple[str, str, str]:
    """The core's version, Python's, and each installed plugin distribution's (entry-point metadata only:
    no plugin is imported), as ``collector version`` prints them."""
    import platform
    from importlib import metadata

    from collector import __version__

    plugins = {ep.dist.name: ep.dist.version for ep in metadata.entry_points(group="collector") if ep.dist is not None}
    return __version__, platform.python_version(), ",".join(f"{n}={v}" for n, v in sorted(plugins.items()))


# -- logs -----------------------------------------------------------------------

_STD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class Redactor(logging.Filter):
    """Masks every registered secret in log messages and fields.

    Config loading registers each ``SecretStr`` value; tokens read from files
    or headers at run time are registered by the components that read them.
    """

    MASK = "***"

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, *secrets: str) -> None:
        with self._lock:
            # Very short secrets would mask ordinary words; they are still never
            # logged by our code, this is the safety net.
            self._secrets |= {s for s in secrets if s and len(s) >= 4}

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            if s in text:
                text = text.replace(s, self.MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            record.msg = self.scrub(record.getMessage())
            record.args = None
            for key, value in list(vars(record).items()):
                if key not in _STD_ATTRS and isinstance(value, str):
                    setattr(record, key, self.scrub(value))
        return True


REDACTOR = Redactor()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["error"] = REDACTOR.scrub(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STD_ATTRS and not k.startswith("_")}
        if extras:
            base += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return REDACTOR.scrub(base)


def setup_logging(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure the ``collector`` logger tree (idempotent)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(REDACTOR)
    root = logging.getLogger("collector")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    # aiohttp's access log is noisy and may carry headers; keep it at warning.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class Telemetry:
    """Metrics plus the health sources the admin server reports."""

    def __init__(self) -> None:
        self.metrics = Metrics()
        # What components use for metrics of their own (ctx.metrics): get-or-create, collector_ prefix.
        self.meter = Meter(self.metrics.registry)
        self.redactor = REDACTOR
