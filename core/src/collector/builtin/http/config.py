"""Configuration of the ``http`` receiver."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from collector.auth import AuthConfig
from collector.durations import ByteSize, Duration
from collector.endpoints import parse_endpoint
from collector.serverlimits import ServerLimitsConfig
from collector.tls import TlsConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _HttpReceiverFields(_Strict):
    """The receiver's own settings (the connection limits come from ServerLimitsConfig, after them)."""

    endpoint: str = Field("127.0.0.1:8080", description="host:port to listen on (0.0.0.0:8080 in containers).")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Require a bearer token when set.")
    tls: TlsConfig | None = Field(None, description="Serve HTTPS when set.")
    max_body_bytes: ByteSize = Field(
        4 * 1024 * 1024,
        gt=0,
        le=1024 * 1024 * 1024,
        description="Larger bodies are refused with 413: a size (4MiB, 512KiB) or bytes.",
    )
    max_events: int = Field(10_000, gt=0, description="Most events in one request; more is refused with 413.")
    read_timeout: Duration = Field(
        30.0, gt=0, description="How long a client may take to send its body before it gets 408 (30s, 1m)."
    )
    format: Literal["cloudevents", "json"] = Field(
        "cloudevents",
        description="cloudevents: the OpenMeter ingest API (/api/v1/events, /api/v3/openmeter/events). json: any "
        "JSON records (object, array or JSON lines) on `path`, turned into CloudEvents by the pipeline's processors "
        "and validated after them.",
    )
    path: str = Field("/ingest", description="Where raw JSON records are posted when format is json.")
    headers: list[str] = Field(
        default_factory=list,
        description="Request headers passed to processors as meta.headers (lower-case names), e.g. x-tenant-id.",
    )
    fill_missing: bool = Field(
        True,
        description="Give events without `time` the arrival time, and events without `id` a deterministic id "
        "from their content. When false such events are refused with 400.",
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        parse_endpoint(v)
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or "{" in v or "?" in v:
            raise ValueError(f"{v!r} is not a URL path (for example /ingest)")
        return v

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: list[str]) -> list[str]:
        return [h.lower() for h in v]


class HttpReceiverConfig(ServerLimitsConfig, _HttpReceiverFields):
    """CloudEvents over HTTP, compatible with OpenMeter's ingest API and SDKs."""
