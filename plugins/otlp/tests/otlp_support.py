"""Helpers of the otlp receiver's tests (imported as ``otlp_support``; conftest puts this directory on sys.path).

The receiver runs inside a real collector service (``run_pipeline`` from the
testing kit) with a mapping processor and the ``memory`` exporter; clients
are the real OpenTelemetry SDK exporters (gRPC and HTTP/protobuf), or raw
gRPC/HTTP requests where a test needs the exact answer.  Every server binds
127.0.0.1 on a port the OS picks.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import collector_plugin_otlp
import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from collector.testing import eventually_sync, testing_registry

# Any record -> a CloudEvent carrying the whole record, with an id derived from its content.
GENERIC_MAPPING = """\
{"specversion": "1.0", "type": "otlp." + this.signal, "source": "test", "id": stable_id(this),
 "subject": coalesce(this.attributes.user, this.resource["service.name"], "nobody"),
 "time": coalesce(this.time, this.end_time, this.observed_time), "data": {"record": this}}"""

# Cumulative counters billed: one event per non-zero delta, id from the series and the point's time.
METER_MAPPING = """\
None if not this.value else {
 "specversion": "1.0", "type": "usage", "source": "test", "id": stable_id(this.series, this.time),
 "subject": coalesce(this.attributes.user, "nobody"), "time": this.time,
 "data": {"value": this.value, "name": this.name, "start": this.start_time}}"""


def pipeline_yaml(receiver: str = "", mapping: str = GENERIC_MAPPING, exporter: str = "") -> str:
    """A pipeline otlp -> mapping -> memory; ``receiver``/``exporter`` are extra YAML flow-mapping entries."""
    indented = "\n".join("      " + line for line in mapping.splitlines())
    grpc_http = '{grpc: {endpoint: "127.0.0.1:0"}, http: {endpoint: "127.0.0.1:0"}'
    extra = f", {receiver}" if receiver else ""
    return f"""
receivers:
  otlp: {grpc_http}{extra}}}
processors:
  mapping:
    expression: |
{indented}
exporters:
  memory: {{batch: {{period: 0.01}}{", " + exporter if exporter else ""}}}
"""


def registry() -> Any:
    """Built-ins, the testing kit's components, and this plugin."""
    return testing_registry([("otlp", collector_plugin_otlp)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- building requests by hand ---------------------------------------------------------------


def kv(key: str, value: Any) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=anyvalue(value))


def anyvalue(value: Any) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, bytes):
        return common_pb2.AnyValue(bytes_value=value)
    if isinstance(value, dict):
        return common_pb2.AnyValue(kvlist_value=common_pb2.KeyValueList(values=[kv(k, v) for k, v in value.items()]))
    if isinstance(value, list):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[anyvalue(v) for v in value]))
    return common_pb2.AnyValue(string_value=str(value))


def resource(**attrs: Any) -> resource_pb2.Resource:
    return resource_pb2.Resource(attributes=[kv(k, v) for k, v in attrs.items()])


T0 = 1_714_564_800_000_000_000  # 2024-05-01T12:00:00Z


def logs_request(bodies: list[Any], **attrs: Any) -> logs_service_pb2.ExportLogsServiceRequest:
    records = [
        logs_pb2.LogRecord(
            time_unix_nano=T0 + i * 1_000_000,
            body=anyvalue(body),
            attributes=[kv(k, v) for k, v in attrs.items()],
            trace_id=bytes(range(16)),
            span_id=bytes(range(8)),
        )
        for i, body in enumerate(bodies)
    ]
    return logs_service_pb2.ExportLogsServiceRequest(
        resource_logs=[
            logs_pb2.ResourceLogs(
                resource=resource(**{"service.name": "svc"}),
                scope_logs=[logs_pb2.ScopeLogs(scope=common_pb2.InstrumentationScope(name="s"), log_records=records)],
            )
        ]
    )


def sum_request(
    points: list[tuple[int, float | int, dict[str, Any]]],
    *,
    start: int = T0,
    cumulative: bool = True,
    monotonic: bool = True,
    name: str = "tokens",
) -> metrics_service_pb2.ExportMetricsServiceRequest:
    """One sum metric with points ``(time offset in seconds, value, attributes)``."""
    dps = []
    for offset, value, attrs in points:
        dp = metrics_pb2.NumberDataPoint(
            start_time_unix_nano=start,
            time_unix_nano=T0 + offset * 1_000_000_000,
            attributes=[kv(k, v) for k, v in attrs.items()],
        )
        if isinstance(value, int):
            dp.as_int = value
        else:
            dp.as_double = value
        dps.append(dp)
    temporality = (
        metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE if cumulative else metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    )
    metric = metrics_pb2.Metric(
        name=name,
        unit="{token}",
        sum=metrics_pb2.Sum(data_points=dps, aggregation_temporality=temporality, is_monotonic=monotonic),
    )
    return metrics_service_pb2.ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(
                resource=resource(**{"service.name": "svc"}),
                scope_metrics=[
                    metrics_pb2.ScopeMetrics(scope=common_pb2.InstrumentationScope(name="m"), metrics=[metric])
                ],
            )
        ]
    )


def spans_request(count: int, **attrs: Any) -> trace_service_pb2.ExportTraceServiceRequest:
    spans = [
        trace_pb2.Span(
            trace_id=bytes([i]) * 16,
            span_id=bytes([i + 1]) * 8,
            name=f"op-{i}",
            kind=trace_pb2.Span.SPAN_KIND_CLIENT,
            start_time_unix_nano=T0,
            end_time_unix_nano=T0 + 1_500_000,
            attributes=[kv(k, v) for k, v in attrs.items()],
        )
        for i in range(count)
    ]
    return trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource(**{"service.name": "svc"}),
                scope_spans=[trace_pb2.ScopeSpans(scope=common_pb2.InstrumentationScope(name="t"), spans=spans)],
            )
        ]
    )


# -- raw clients -----------------------------------------------------------------------------

SERVICES = {
    "logs": ("opentelemetry.proto.collector.logs.v1.LogsService", logs_service_pb2.ExportLogsServiceResponse),
    "metrics": (
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "traces": ("opentelemetry.proto.collector.trace.v1.TraceService", trace_service_pb2.ExportTraceServiceResponse),
}


@contextmanager
def grpc_channel(port: int, *, credentials: grpc.ChannelCredentials | None = None) -> Iterator[grpc.Channel]:
    target = f"127.0.0.1:{port}"
    channel = (
        grpc.secure_channel(target, credentials, options=[("grpc.ssl_target_name_override", "localhost")])
        if credentials
        else grpc.insecure_channel(target)
    )
    try:
        yield channel
    finally:
        channel.close()


def grpc_export(
    channel: grpc.Channel,
    signal: str,
    payload: bytes | Any,
    *,
    token: str | None = None,
    compression: grpc.Compression | None = None,
    timeout: float = 10.0,
) -> Any:
    """Call Export with raw bytes (or a message); returns the decoded response or raises grpc.RpcError."""
    service, response_type = SERVICES[signal]
    call = channel.unary_unary(
        f"/{service}/Export",
        request_serializer=None,
        response_deserializer=response_type.FromString,
    )
    body = payload if isinstance(payload, bytes) else payload.SerializeToString()
    metadata = [("authorization", f"Bearer {token}")] if token else None
    return call(body, metadata=metadata, timeout=timeout, compression=compression)


def status_details(error: grpc.RpcError) -> Any:
    """The google.rpc.Status in an error's trailing metadata (None when absent)."""
    from google.rpc import status_pb2

    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return None


# -- TLS material ----------------------------------------------------------------------------


def self_signed(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the TLS tests need the openssl CLI")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    eventually_sync(predicate, timeout=timeout, interval=0.01)


# -- the real OpenTelemetry SDK exporters ----------------------------------------------------


class Sdk:
    """The SDK's OTLP exporters (gRPC or HTTP/protobuf, gzip or not) pointed at a receiver.

    Their ``export`` calls block: call them from a thread (``asyncio.to_thread``)
    so that the receiver, on the test's event loop, can answer.
    """

    def __init__(
        self, transport: str, port: int, *, gzip: bool = False, token: str | None = None, timeout: float = 5.0
    ) -> None:
        self.transport = transport
        self.port = port
        self.gzip = gzip
        self.headers = {"authorization": f"Bearer {token}"} if token else None
        self.timeout = timeout

    def _kwargs(self, path: str) -> dict[str, Any]:
        if self.transport == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.exporter import Compression

            return {
                "endpoint": f"http://127.0.0.1:{self.port}",
                "insecure": True,
                "compression": Compression.Gzip if self.gzip else Compression.NoCompression,
                "headers": self.headers,
                "timeout": self.timeout,
            }
        from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression

        return {
            "endpoint": f"http://127.0.0.1:{self.port}{path}",
            "compression": HttpCompression.Gzip if self.gzip else HttpCompression.NoCompression,
            "headers": self.headers,
            "timeout": self.timeout,
        }

    def log_exporter(self) -> Any:
        if self.transport == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        else:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter  # type: ignore[assignment]
        return OTLPLogExporter(**self._kwargs("/v1/logs"))

    def span_exporter(self) -> Any:
        if self.transport == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
        return OTLPSpanExporter(**self._kwargs("/v1/traces"))

    def metric_exporter(self) -> Any:
        if self.transport == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (  # type: ignore[assignment]
                OTLPMetricExporter,
            )
        return OTLPMetricExporter(**self._kwargs("/v1/metrics"))


def sdk_resource(**attrs: Any) -> Any:
    from opentelemetry.sdk.resources import Resource

    return Resource.create({"service.name": "sdk-app", **attrs})


def emit_logs(exporter: Any, entries: list[tuple[Any, dict[str, Any]]]) -> bool:
    """Log ``(body, attributes)`` entries with the SDK and export them in one request; True on success."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

    captured = InMemoryLogRecordExporter()
    provider = LoggerProvider(resource=sdk_resource())
    provider.add_log_record_processor(SimpleLogRecordProcessor(captured))
    logger = provider.get_logger("billing", "1.2.3")
    for body, attrs in entries:
        logger.emit(body=body, attributes=attrs, timestamp=time.time_ns())
    provider.shutdown()
    result = exporter.export(captured.get_finished_logs())
    return result.name == "SUCCESS"


def emit_spans(exporter: Any, entries: list[tuple[str, dict[str, Any]]]) -> tuple[bool, list[Any]]:
    """Record ``(name, attributes)`` spans with the SDK and export them in one request."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    captured = InMemorySpanExporter()
    provider = TracerProvider(resource=sdk_resource())
    provider.add_span_processor(SimpleSpanProcessor(captured))
    tracer = provider.get_tracer("genai", "0.1")
    for name, attrs in entries:
        with tracer.start_as_current_span(name, attributes=attrs):
            pass
    spans = list(captured.get_finished_spans())
    provider.shutdown()
    result = exporter.export(spans)
    return result.name == "SUCCESS", spans


class Meter:
    """An SDK MeterProvider whose metrics are exported (cumulative, the SDK default) when asked."""

    def __init__(self, **resource_attrs: Any) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader

        self.reader = InMemoryMetricReader()
        self.provider = MeterProvider(metric_readers=[self.reader], resource=sdk_resource(**resource_attrs))
        self.meter = self.provider.get_meter("usage", "1.0")

    def collect(self) -> Any:
        return self.reader.get_metrics_data()

    def export(self, exporter: Any, data: Any = None) -> bool:
        result = exporter.export(data if data is not None else self.collect())
        return result.name == "SUCCESS"

    def shutdown(self) -> None:
        self.provider.shutdown()
