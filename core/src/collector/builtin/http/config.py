"""Configuration of the ``http`` receiver."""

from __future__ import annotations

import hmac
import os
import ssl
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from collector.config import parse_endpoint


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TlsConfig(_Strict):
    """Serve HTTPS with a certificate and key from files."""

    cert_file: Path = Field(description="PEM certificate chain.")
    key_file: Path = Field(description="PEM private key.")

    def server_context(self, path: str) -> ssl.SSLContext:
        """An SSL context serving this certificate; ConfigError at ``path`` when it cannot be loaded."""
        from collector.errors import ConfigError

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file))
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"cannot load TLS certificate/key: {exc}", path) from None
        return ctx

    @model_validator(mode="after")
    def _exists(self) -> TlsConfig:
        for name in ("cert_file", "key_file"):
            path: Path = getattr(self, name)
            if not path.is_file():
                raise ValueError(f"{name} {str(path)!r} does not exist or is not a file")
        return self


class AuthConfig(_Strict):
    """Bearer tokens that callers must present.  Any one of them is accepted."""

    tokens: list[SecretStr] = Field(
        default_factory=list,
        description="Tokens written inline (prefer ${VAR}); empty strings are ignored, so "
        '`["${INGEST_TOKEN:-}"]` turns auth on only when the variable is set.',
    )
    tokens_file: Path | None = Field(
        None, description="File with one token per line (blank lines and # comments ignored)."
    )
    tokens_env: str | None = Field(
        None, description="Name of an environment variable holding one token or several, comma-separated."
    )

    def resolve(self) -> list[str]:
        """Every configured token; raises ValueError with an actionable message."""
        out = [t.get_secret_value() for t in self.tokens if t.get_secret_value()]
        if self.tokens_file is not None:
            try:
                text = self.tokens_file.read_text(encoding="utf-8")
            except OSError as exc:
                raise ValueError(f"cannot read tokens_file {str(self.tokens_file)!r}: {exc.strerror}") from None
            out += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if self.tokens_env:
            value = os.environ.get(self.tokens_env)
            if not value:
                raise ValueError(f"environment variable {self.tokens_env} (tokens_env) is not set or empty")
            out += [t.strip() for t in value.split(",") if t.strip()]
        return out

    def bearer_tokens(self, path: str, redactor: Any) -> list[bytes]:
        """The ``Authorization`` values to accept (``Bearer <token>``), for :class:`BearerAuth`.

        Raises ConfigError at ``path`` when a source cannot be read or yields
        nothing; registers every token with the log redactor.
        """
        from collector.errors import ConfigError

        try:
            tokens = self.resolve()
        except ValueError as exc:
            raise ConfigError(str(exc), path) from None
        if self.enabled and not tokens:
            raise ConfigError("auth is configured but yields no token", path)
        redactor.add(*tokens)
        return [f"Bearer {t}".encode() for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(any(t.get_secret_value() for t in self.tokens) or self.tokens_file or self.tokens_env)


class BearerAuth:
    """Checks ``Authorization`` headers against the configured tokens.

    Every token is compared in constant time (``hmac.compare_digest``), and a
    header that is not valid UTF-8 is compared as its raw bytes, never an error.
    """

    def __init__(self, accepted: list[bytes]) -> None:
        self.accepted = accepted

    @property
    def required(self) -> bool:
        return bool(self.accepted)

    def allows(self, header: str | bytes | None) -> bool:
        if not self.accepted:
            return True
        given = header.encode("utf-8", "surrogateescape") if isinstance(header, str) else (header or b"")
        ok = False
        for token in self.accepted:  # compare with all, in constant time each
            ok |= hmac.compare_digest(given, token)
        return ok


class HttpReceiverConfig(_Strict):
    """CloudEvents over HTTP, compatible with OpenMeter's ingest API and SDKs."""

    endpoint: str = Field("127.0.0.1:8080", description="host:port to listen on (0.0.0.0:8080 in containers).")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Require a bearer token when set.")
    tls: TlsConfig | None = Field(None, description="Serve HTTPS when set.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024, gt=0, le=1024 * 1024 * 1024, description="Larger bodies are refused with 413."
    )
    max_events: int = Field(10_000, gt=0, description="Most events in one request; more is refused with 413.")
    read_timeout: float = Field(
        30.0, gt=0, description="Seconds a client may take to send its body before it gets 408."
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
