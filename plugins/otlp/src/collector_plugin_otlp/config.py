"""Configuration of the ``otlp`` receiver (pydantic only: cheap to import)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collector.api import AuthConfig, ByteSize, Duration, ServerLimitsConfig, TlsConfig, parse_endpoint

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
DEFAULT_SERIES_TTL = 24 * 3600.0  # the delta state's defaults (delta.py keeps the same; config stays cheap)
DEFAULT_MAX_SERIES = 100_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_endpoint(v: str) -> str:
    parse_endpoint(v)
    return v


class GrpcConfig(_Strict):
    """OTLP/gRPC: the Export methods of the logs, metrics and trace services."""

    endpoint: str = Field("127.0.0.1:4317", description="host:port to listen on (0.0.0.0:4317 in containers).")
    tls: TlsConfig | None = Field(None, description="Serve gRPC over TLS when set.")
    max_connection_age: Duration | None = Field(
        None,
        gt=0,
        description="Ask each client to reconnect after this long (gRPC GOAWAY; its calls in flight finish): a "
        "client's load then moves over worker processes and over replicas behind a Service instead of staying on "
        "the one its connection reached (5m, 30s). null: connections live as long as the client keeps them. Not "
        "with metrics.cumulative_to_delta, whose series must keep reaching the same collector.",
    )
    max_connection_age_grace: Duration = Field(
        30.0, gt=0, description="How long calls in flight may take after that request to reconnect (30s)."
    )

    _endpoint = field_validator("endpoint")(_check_endpoint)


class _HttpListener(_Strict):
    """The OTLP/HTTP settings of its own; :class:`HttpConfig` adds the connection limits after them."""

    endpoint: str = Field("127.0.0.1:4318", description="host:port to listen on (0.0.0.0:4318 in containers).")
    tls: TlsConfig | None = Field(None, description="Serve HTTPS when set.")
    read_timeout: Duration = Field(
        30.0, gt=0, description="How long a client may take to send its body before it gets 408 (30s, 1m)."
    )


# header_timeout, idle_timeout and max_connections: the core http receiver's settings and defaults.
class HttpConfig(ServerLimitsConfig, _HttpListener):
    """OTLP/HTTP: POST /v1/logs, /v1/metrics and /v1/traces, protobuf or JSON."""


class MetricsConfig(_Strict):
    """How metric data points become records."""

    cumulative_to_delta: bool = Field(
        True,
        description="Turn CUMULATIVE sums, histograms and summaries into deltas per series, with the last value "
        "of each series kept in the receiver's state store (a restart, a re-sent export or a counter reset never "
        "counts usage twice or loses it). false: pass cumulative values through unchanged.",
    )
    initial_value: Literal["keep", "drop"] = Field(
        "keep",
        description="The first point of a series never seen before: keep counts its whole cumulative value as "
        "usage (since its start_time); drop only remembers it as the baseline.",
    )
    series_ttl: Duration | None = Field(
        DEFAULT_SERIES_TTL,
        gt=0,
        description="Forget a series not seen for this long while the collector runs (a duration such as 24h or "
        "30d, or seconds; default 24h). Nothing is forgotten during the first series_ttl after a start, so a "
        "stopped collector does not forget the series it will see again. A forgotten series that comes back "
        "counts as new (see initial_value), so keep it longer than any silence of a live series. null: never "
        "forget (max_series still applies).",
    )
    max_series: int = Field(
        DEFAULT_MAX_SERIES,
        gt=0,
        description="Most series the state holds (each takes about 600 bytes on disk). A point of a new series "
        "when the state is full is refused: not emitted, reported to the client as a rejected data point, "
        "counted in collector_otlp_delta_refused_series_total and logged. Expired series make room again.",
    )


class OtlpReceiverConfig(_Strict):
    """OpenTelemetry logs, metrics and traces over OTLP/gRPC and OTLP/HTTP, as records for mappings."""

    grpc: GrpcConfig | None = Field(default_factory=GrpcConfig, description="The OTLP/gRPC server; null disables it.")
    http: HttpConfig | None = Field(default_factory=HttpConfig, description="The OTLP/HTTP server; null disables it.")
    auth: AuthConfig = Field(
        default_factory=AuthConfig,
        description="Require `Authorization: Bearer <token>` (HTTP header or gRPC metadata) when set.",
    )
    max_message_bytes: ByteSize = Field(
        DEFAULT_MAX_MESSAGE_BYTES,
        gt=0,
        le=1024 * 1024 * 1024,
        description="Largest request, on the wire and after gzip decompression (4MiB, 16MiB or bytes); larger ones "
        "get HTTP 413 or gRPC RESOURCE_EXHAUSTED.",
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="How metric points become records.")

    @model_validator(mode="after")
    def _one_transport(self) -> OtlpReceiverConfig:
        if self.grpc is None and self.http is None:
            raise ValueError("grpc and http are both null: enable at least one transport")
        if self.grpc is not None and self.grpc.max_connection_age is not None and self.metrics.cumulative_to_delta:
            # The delta state of a series lives in one collector: a client moved to another replica
            # would have its cumulative series counted again from the start there.
            raise ValueError(
                "grpc.max_connection_age moves clients between collectors, but metrics.cumulative_to_delta needs "
                "every export of a series to reach the same one: set metrics.cumulative_to_delta: false (with SDKs "
                "exporting delta temporality) or leave max_connection_age unset"
            )
        return self
