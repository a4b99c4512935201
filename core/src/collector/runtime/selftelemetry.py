"""Pushing the collector's own metrics and logs over OTLP/HTTP.

See docs/operations.md, "Exporting the collector's own telemetry over OTLP".
With ``service.telemetry.otlp`` configured, :class:`SelfTelemetry` sends

* every ``interval``, the samples of a metric source (by default the
  registry that ``/metrics`` serves) as an ``ExportMetricsServiceRequest``:
  counters become monotonic cumulative sums, gauges gauges, histograms
  histograms with explicit bounds, summaries summaries;
* the ``collector`` log records at ``logs_level`` or above, as
  ``ExportLogsServiceRequest`` batches, redacted like the console lines.

Why it is built this way: the telemetry of a collector must never hurt the
collector.  Log records go into a bounded queue (a full queue drops the record
and counts it, logging never waits); the registry is read and encoded in a
worker thread; each POST has a timeout and at most one per signal is in
flight, so a slow endpoint skips pushes instead of piling them up; a failure
is one warning per distinct problem, not one per push.  Lost pushes are
harmless for metrics, which are cumulative.

The protobuf messages come from ``opentelemetry-proto``, the optional extra
``collector-core[otel]``; they are imported only when the section is
configured (:func:`load_proto` raises a :class:`ConfigError` naming the extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client.metrics_core import Metric

import collector
from collector.config import OtlpTelemetryConfig
from collector.errors import ConfigError
from collector.telemetry import _STD_ATTRS, REDACTOR, Redactor

if TYPE_CHECKING:
    from collector.telemetry import Telemetry

log = logging.getLogger("collector.runtime.selftelemetry")

MetricSource = Callable[[], Iterable[Metric]]

#: One id per process, kept across reloads: the OTLP backend sees one instance.
INSTANCE_ID = str(uuid.uuid4())
#: Start of the cumulative counters (they live as long as the process).
PROCESS_START_NS = time.time_ns()

CONTENT_TYPE = "application/x-protobuf"
LOG_BATCH = 512  # records per logs request
LOG_FLUSH_S = 1.0  # logs are sent at least this often (or every `interval` if shorter)
INSTALL_HINT = "pip install 'collector-core[otel]'"

_SEVERITY = {logging.DEBUG: 5, logging.INFO: 9, logging.WARNING: 13, logging.ERROR: 17, logging.CRITICAL: 21}


def load_proto() -> SimpleNamespace:
    """The OTLP protobuf modules, or a ConfigError saying which extra installs them."""
    try:
        from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
        from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
        from opentelemetry.proto.common.v1 import common_pb2
        from opentelemetry.proto.logs.v1 import logs_pb2
        from opentelemetry.proto.metrics.v1 import metrics_pb2
        from opentelemetry.proto.resource.v1 import resource_pb2
    except ImportError as exc:
        raise ConfigError(
            f"OTLP export of the collector's telemetry needs opentelemetry-proto ({exc}): {INSTALL_HINT}",
            "service.telemetry.otlp",
        ) from None
    return SimpleNamespace(
        logs_service=logs_service_pb2,
        metrics_service=metrics_service_pb2,
        common=common_pb2,
        logs=logs_pb2,
        metrics=metrics_pb2,
        resource=resource_pb2,
    )


# -- encoding ---------------------------------------------------------------------


def _any_value(pb: SimpleNamespace, value: Any) -> Any:
    common = pb.common
    if isinstance(value, bool):
        return common.AnyValue(bool_value=value)
    if isinstance(value, int) and -(2**63) <= value < 2**63:
        return common.AnyValue(int_value=value)
    if isinstance(value, float):
        return common.AnyValue(double_value=value)
    if isinstance(value, list | tuple):
        return common.AnyValue(array_value=common.ArrayValue(values=[_any_value(pb, v) for v in value]))
    if isinstance(value, dict):
        kvs = [common.KeyValue(key=str(k), value=_any_value(pb, v)) for k, v in value.items()]
        return common.AnyValue(kvlist_value=common.KeyValueList(values=kvs))
    return common.AnyValue(string_value=REDACTOR.scrub(str(value)))


def _attributes(pb: SimpleNamespace, attrs: dict[str, Any]) -> list[Any]:
    return [pb.common.KeyValue(key=k, value=_any_value(pb, v)) for k, v in attrs.items()]


def resource_attributes(instance_id: str = INSTANCE_ID) -> dict[str, Any]:
    """What identifies this collector to the backend (OpenTelemetry semantic conventions)."""
    return {
        "service.name": "collector",
        "service.version": collector.__version__,
        "service.instance.id": instance_id,
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
    }


def _scope(pb: SimpleNamespace, name: str) -> Any:
    return pb.common.InstrumentationScope(name=name, version=collector.__version__)


def encode_metrics(
    pb: SimpleNamespace,
    families: Iterable[Metric],
    resource: dict[str, Any],
    *,
    start_ns: int = PROCESS_START_NS,
    now_ns: int | None = None,
) -> bytes:
    """An ``ExportMetricsServiceRequest`` holding every sample of ``families``."""
    now = now_ns if now_ns is not None else time.time_ns()
    m = pb.metrics
    out = [metric for family in families for metric in _convert(pb, family, start_ns, now)]
    request = pb.metrics_service.ExportMetricsServiceRequest(
        resource_metrics=[
            m.ResourceMetrics(
                resource=pb.resource.Resource(attributes=_attributes(pb, resource)),
                scope_metrics=[m.ScopeMetrics(scope=_scope(pb, "collector"), metrics=out)],
            )
        ]
    )
    return bytes(request.SerializeToString())


def _convert(pb: SimpleNamespace, family: Metric, start: int, now: int) -> list[Any]:
    m = pb.metrics
    cumulative = m.AGGREGATION_TEMPORALITY_CUMULATIVE
    if family.type == "counter":
        points = [
            m.NumberDataPoint(
                attributes=_attributes(pb, s.labels), start_time_unix_nano=start, time_unix_nano=now, as_double=s.value
            )
            for s in family.samples
            if s.name == family.name + "_total"
        ]
        if not points:
            return []
        summed = m.Sum(data_points=points, aggregation_temporality=cumulative, is_monotonic=True)
        return [m.Metric(name=family.name, description=family.documentation, unit=family.unit, sum=summed)]
    if family.type == "histogram":
        return _histogram(pb, family, start, now)
    if family.type == "summary":
        return _summary(pb, family, start, now)
    # gauges, and anything else (info, stateset, unknown): one gauge per sample name
    by_name: dict[str, list[Any]] = {}
    for s in family.samples:
        point = m.NumberDataPoint(attributes=_attributes(pb, s.labels), time_unix_nano=now, as_double=s.value)
        by_name.setdefault(s.name, []).append(point)
    return [
        m.Metric(name=name, description=family.documentation, unit=family.unit, gauge=m.Gauge(data_points=points))
        for name, points in by_name.items()
    ]


def _series(labels: dict[str, str], drop: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in labels.items() if k != drop))


def _histogram(pb: SimpleNamespace, family: Metric, start: int, now: int) -> list[Any]:
    """Prometheus buckets are cumulative (``le``); OTLP counts each bucket once, +Inf implied by the last."""
    m = pb.metrics
    buckets: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
    sums: dict[tuple[tuple[str, str], ...], float] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for s in family.samples:
        key = _series(s.labels, "le")
        if s.name == family.name + "_bucket":
            buckets.setdefault(key, []).append((float(s.labels["le"]), s.value))
        elif s.name == family.name + "_sum":
            sums[key] = s.value
        elif s.name == family.name + "_count":
            counts[key] = s.value
    points = []
    for key, cumulative in buckets.items():
        cumulative.sort()
        bounds = [le for le, _ in cumulative if not math.isinf(le)]
        per_bucket, previous = [], 0.0
        for _, total in cumulative:
            per_bucket.append(int(total - previous))
            previous = total
        if len(per_bucket) == len(bounds):  # no +Inf bucket: everything above the last bound is the rest
            per_bucket.append(int(counts.get(key, previous) - previous))
        points.append(
            m.HistogramDataPoint(
                attributes=_attributes(pb, dict(key)),
                start_time_unix_nano=start,
                time_unix_nano=now,
                count=int(counts.get(key, previous)),
                sum=sums.get(key, 0.0),
                explicit_bounds=bounds,
                bucket_counts=per_bucket,
            )
        )
    if not points:
        return []
    histogram = m.Histogram(data_points=points, aggregation_temporality=m.AGGREGATION_TEMPORALITY_CUMULATIVE)
    return [m.Metric(name=family.name, description=family.documentation, unit=family.unit, histogram=histogram)]


def _summary(pb: SimpleNamespace, family: Metric, start: int, now: int) -> list[Any]:
    m = pb.metrics
    points: dict[tuple[tuple[str, str], ...], Any] = {}
    for s in family.samples:
        key = _series(s.labels, "quantile")
        point = points.get(key)
        if point is None:
            point = points[key] = m.SummaryDataPoint(
                attributes=_attributes(pb, dict(key)), start_time_unix_nano=start, time_unix_nano=now
            )
        if s.name == family.name + "_count":
            point.count = int(s.value)
        elif s.name == family.name + "_sum":
            point.sum = s.value
        elif s.name == family.name and "quantile" in s.labels:
            point.quantile_values.add(quantile=float(s.labels["quantile"]), value=s.value)
    if not points:
        return []
    summary = m.Summary(data_points=list(points.values()))
    return [m.Metric(name=family.name, description=family.documentation, unit=family.unit, summary=summary)]


@dataclass(slots=True)
class LogItem:
    """What a log record becomes at once, so the queue holds no references into the logging call."""

    time_ns: int
    level: int
    level_name: str
    logger: str
    body: str
    attributes: dict[str, Any]


def encode_logs(pb: SimpleNamespace, items: list[LogItem], resource: dict[str, Any]) -> bytes:
    """An ``ExportLogsServiceRequest``: one scope per logger name, as the OpenTelemetry SDKs do."""
    lg = pb.logs
    observed = time.time_ns()
    by_logger: dict[str, list[Any]] = {}
    for item in items:
        record = lg.LogRecord(
            time_unix_nano=item.time_ns,
            observed_time_unix_nano=observed,
            severity_number=_SEVERITY.get(item.level, 9),
            severity_text=item.level_name,
            body=pb.common.AnyValue(string_value=item.body),
            attributes=_attributes(pb, item.attributes),
        )
        by_logger.setdefault(item.logger, []).append(record)
    request = pb.logs_service.ExportLogsServiceRequest(
        resource_logs=[
            lg.ResourceLogs(
                resource=pb.resource.Resource(attributes=_attributes(pb, resource)),
                scope_logs=[
                    lg.ScopeLogs(scope=_scope(pb, name), log_records=records) for name, records in by_logger.items()
                ],
            )
        ]
    )
    return bytes(request.SerializeToString())


# -- the log handler -----------------------------------------------------------------------


class QueueingLogHandler(logging.Handler):
    """Puts each record, redacted, into a bounded queue; a full queue drops it (counted), never waits."""

    def __init__(
        self, level: int, maxsize: int, *, redactor: Redactor = REDACTOR, on_drop: Callable[[], None] | None = None
    ) -> None:
        super().__init__(level)
        self.queue: queue.Queue[LogItem] = queue.Queue(maxsize)
        self.dropped = 0
        self._on_drop = on_drop
        self._redactor = redactor
        # The same filter as the console handler: secrets in the message and the fields become ***.
        self.addFilter(redactor)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            attributes: dict[str, Any] = {
                k: v for k, v in vars(record).items() if k not in _STD_ATTRS and not k.startswith("_")
            }
            if record.exc_info:
                attributes["exception.stacktrace"] = self._redactor.scrub(
                    logging.Formatter().formatException(record.exc_info)
                )
            item = LogItem(
                time_ns=int(record.created * 1e9),
                level=record.levelno,
                level_name=record.levelname,
                logger=record.name,
                body=self._redactor.scrub(record.getMessage()),
                attributes=attributes,
            )
            self.queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()
        except Exception:
            self.handleError(record)

    def take(self, limit: int) -> list[LogItem]:
        out: list[LogItem] = []
        with contextlib.suppress(queue.Empty):
            while len(out) < limit:
                out.append(self.queue.get_nowait())
        return out


# -- the pusher --------------------------------------------------------------------------


class SelfTelemetry:
    """Periodic OTLP/HTTP pushes of one metric source and of the ``collector`` logs."""

    def __init__(
        self,
        config: OtlpTelemetryConfig,
        telemetry: Telemetry,
        *,
        source: MetricSource | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.config = config
        self.pb = load_proto()
        self.source: MetricSource = source or telemetry.metrics.registry.collect
        self.resource = resource_attributes()
        base = config.endpoint.rstrip("/")
        self.urls = {"metrics": base + "/v1/metrics", "logs": base + "/v1/logs"}
        self.headers = {"Content-Type": CONTENT_TYPE}
        self.headers.update({k: v.get_secret_value() for k, v in config.headers.items()})
        telemetry.redactor.add(*(v.get_secret_value() for v in config.headers.values()))
        meter = telemetry.meter
        self._exports = meter.counter(
            "selftelemetry_exports", "OTLP pushes of the collector's own telemetry.", ["signal", "outcome"]
        )
        self._dropped = meter.counter(
            "selftelemetry_dropped_log_records",
            "Log records not sent over OTLP: the queue was full, or their push failed.",
            ["reason"],
        )
        self._logger = logger or logging.getLogger("collector")
        self.handler: QueueingLogHandler | None = None
        if config.logs:
            level = logging.getLevelNamesMapping()[config.logs_level.upper()]
            self.handler = QueueingLogHandler(
                level, config.log_queue_size, on_drop=self._dropped.labels(reason="queue_full").inc
            )
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._problems: dict[str, str] = {}

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.config.timeout))
        if self.config.metrics:
            self._tasks.append(asyncio.create_task(self._every(self.config.interval, self.push_metrics)))
        if self.handler is not None:
            self._logger.addHandler(self.handler)
            flush = min(LOG_FLUSH_S, self.config.interval)
            self._tasks.append(asyncio.create_task(self._every(flush, self.push_logs)))
        log.info(
            "exporting the collector's own %s over OTLP to %s",
            " and ".join(s for s, on in (("metrics", self.config.metrics), ("logs", self.config.logs)) if on),
            self.config.endpoint,
        )

    async def stop(self) -> None:
        """One last push of each signal (bounded by ``timeout``), then the session closes."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.handler is not None:
            self._logger.removeHandler(self.handler)
        if self._session is None:
            return
        try:
            async with asyncio.timeout(self.config.timeout):
                if self.config.metrics:
                    await self.push_metrics()
                if self.handler is not None:
                    while not self.handler.queue.empty():
                        await self.push_logs()
        except TimeoutError:
            log.warning("final OTLP push of the collector's telemetry gave up after %ss", self.config.timeout)
        finally:
            await self._session.close()
            self._session = None

    async def _every(self, period: float, push: Callable[[], Any]) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await push()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let a bug here end the pushes silently
                self._problem("telemetry", f"{type(exc).__name__}: {exc}")

    async def push_metrics(self) -> bool:
        body = await asyncio.to_thread(self._encode_metrics)
        return await self._post("metrics", body)

    def _encode_metrics(self) -> bytes:
        return encode_metrics(self.pb, list(self.source()), self.resource)

    async def push_logs(self) -> bool:
        """Send what the queue holds, a batch at a time; a failed batch is dropped (counted)."""
        assert self.handler is not None
        while True:
            items = self.handler.take(LOG_BATCH)
            if not items:
                return True
            if not await self._post("logs", encode_logs(self.pb, items, self.resource)):
                self._dropped.labels(reason="export_failed").inc(len(items))
                return False

    async def _post(self, signal: str, body: bytes) -> bool:
        assert self._session is not None
        url = self.urls[signal]
        try:
            async with self._session.post(url, data=body, headers=self.headers) as resp:
                await resp.read()
                ok = 200 <= resp.status < 300
                problem = "" if ok else f"HTTP {resp.status}"
        except TimeoutError:
            problem = f"no answer within {self.config.timeout}s"
        except aiohttp.ClientError as exc:
            problem = f"{type(exc).__name__}: {exc}"
        self._exports.labels(signal=signal, outcome="failed" if problem else "ok").inc()
        if problem:
            self._problem(signal, problem)
            return False
        if self._problems.pop(signal, None) is not None:
            log.info("OTLP export of the collector's %s to %s works again", signal, url)
        return True

    def _problem(self, signal: str, problem: str) -> None:
        """One warning per distinct problem, until the export works again."""
        if self._problems.get(signal) == problem:
            return
        self._problems[signal] = problem
        log.warning(
            "OTLP export of the collector's %s to %s failed: %s (reported once until it recovers; "
            "intake and delivery are not affected)",
            signal,
            self.urls.get(signal, self.config.endpoint),
            problem,
        )


async def restart(
    current: SelfTelemetry | None,
    config: OtlpTelemetryConfig | None,
    telemetry: Telemetry,
    source: MetricSource | None = None,
) -> SelfTelemetry | None:
    """Stop ``current`` (if any) and start what ``config`` asks for (if anything); the supervisor's one call."""
    if current is not None:
        await current.stop()
    if config is None or not (config.metrics or config.logs):
        return None
    pusher = SelfTelemetry(config, telemetry, source=source)
    await pusher.start()
    return pusher
