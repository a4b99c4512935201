"""Configuration of the ``openmeter`` exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from collector.components import ExporterConfig

V1_PATH = "/api/v1/events"
V3_PATH = "/api/v3/openmeter/events"


class OpenMeterExporterConfig(ExporterConfig):
    """Deliver CloudEvents to OpenMeter: cloud, self-hosted, or Kong Konnect (v3)."""

    url: str = Field(
        "https://openmeter.cloud",
        description="Base URL. A URL ending in /v3/openmeter (Konnect: https://us.api.konghq.com/v3/openmeter) "
        "selects API v3.",
    )
    api: Literal["auto", "v1", "v3"] = Field(
        "auto", description="Ingest API version; auto picks v3 for URLs ending in /v3/openmeter, else v1."
    )
    token: SecretStr | None = Field(None, description="API token sent as a bearer token (use ${OPENMETER_TOKEN}).")
    token_file: Path | None = Field(None, description="Read the token from this file (e.g. a mounted secret).")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    ca_file: Path | None = Field(None, description="CA bundle to verify the server with.")
    insecure_skip_verify: bool = Field(False, description="Do not verify the server certificate (testing only).")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{v!r} is not an http(s) URL (for example https://openmeter.cloud)")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _token_source(self) -> OpenMeterExporterConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        return self

    def resolved_api(self) -> Literal["v1", "v3"]:
        if self.api != "auto":
            return self.api
        return "v3" if urlsplit(self.url).path.rstrip("/").endswith("/v3/openmeter") else "v1"

    def endpoint(self) -> str:
        if self.resolved_api() == "v1":
            return self.url + V1_PATH
        if urlsplit(self.url).path.rstrip("/").endswith("/v3/openmeter"):
            return self.url + "/events"
        return self.url + V3_PATH

    def resolve_token(self) -> str | None:
        if self.token is not None:
            return self.token.get_secret_value() or None
        if self.token_file is not None:
            try:
                return self.token_file.read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise ValueError(f"cannot read token_file {str(self.token_file)!r}: {exc.strerror}") from None
        return None
