"""Configuration of the ``otlp`` receiver (pydantic only: cheap to import)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collector.api import AuthConfig, ByteSize, Duration, TlsConfig, parse_endpoint

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _check_endpoint(v: str) -> str:
    parse_endpoint(v)
    return v


class GrpcConfig(_Strict):
    """OTLP/gRPC: the Export methods of the logs, metrics and trace services."""

    endpoint: str = Field("127.0.0.1:4317", description="host:port to listen on (0.0.0.0:4317 in containers).")
    tls: TlsConfig | None = Field(None, description="Serve gRPC over TLS when set.")

    _endpoint = field_validator("endpoint")(_check_endpoint)


class HttpConfig(_Strict):
    """OTLP/HTTP: POST /v1/logs, /v1/metrics and /v1/traces, protobuf or JSON."""

    endpoint: str = Field("127.0.0.1:4318", description="host:port to listen on (0.0.0.0:4318 in containers).")
    tls: TlsConfig | None = Field(None, description="Serve HTTPS when set.")
    read_timeout: Duration = Field(
        30.0, gt=0, description="How long a client may take to send its body before it gets 408 (30s, 1m)."
    )


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
        None,
        gt=0,
        description="Forget a series not seen for this long (a duration such as 30d, or seconds). Unset: never "
        "forget. A forgotten series that comes back counts as new (see initial_value), so keep it longer than "
        "any silence of a live series.",
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
        return self
