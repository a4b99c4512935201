"""Configuration of the ``openmeter`` exporter."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal
from urllib.parse import SplitResult, unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from collector.components import ExporterConfig

V1_PATH = "/api/v1/events"
V3_PATH = "/api/v3/openmeter/events"
MASK = "***"
# RFC 9110 token characters: what a header name may be made of.
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Extra headers whose values are credentials (masked like the token).
_SENSITIVE_HEADER_WORDS = ("auth", "token", "key", "secret", "cookie", "password")


def header_problem(name: str, value: str) -> str | None:
    """Why a request header cannot be sent as it is (None when it can): a name that is not an
    HTTP token, or a value with a line break or NUL (they would end the header, or the request)."""
    if not name or not _TOKEN_CHARS.issuperset(name):
        return f"header name {name[:40]!r} is not an HTTP token (letters, digits, - and the like)"
    if any(c in value for c in "\r\n\0"):
        return f"the value of header {name!r} holds line breaks or NUL"
    return None


def _split(url: str) -> SplitResult | None:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in range
    except ValueError:
        return None
    return parts


def mask_userinfo(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part (if any) masked; a
    URL that cannot be parsed is not repeated at all (it may hold a password)."""
    parts = _split(url)
    if parts is None:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}").geturl()


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
        # The value is never echoed: it may hold credentials (https://user:password@host).
        parts = _split(v)
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "not a usable URL: it needs the scheme http or https, a host and at most a numeric port "
                "(for example https://openmeter.cloud)"
            )
        return v.rstrip("/")

    @field_validator("headers")
    @classmethod
    def _headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            problem = header_problem(name, value)
            if problem is not None:
                raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _token_source(self) -> OpenMeterExporterConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        parts = _split(self.url)
        in_url = parts is not None and (parts.username is not None or parts.password is not None)
        by_header = any(h.lower() == "authorization" for h in self.headers)
        if in_url and (self.token is not None or self.token_file is not None or by_header):
            raise ValueError(
                "credentials in url (basic authentication) conflict with token, token_file or "
                "headers.Authorization: set one of them"
            )
        return self

    def display_url(self, url: str | None = None) -> str:
        """``url`` (by default the configured one) as it may be logged or shown: no password."""
        return mask_userinfo(self.url if url is None else url)

    def secrets(self, token: str | None = None) -> list[str]:
        """Every configured value that must never be shown: the token (``token``, or
        ``token_file``'s content when readable), credential-like ``headers``, and the
        credentials of ``url``, also as an ``Authorization: Basic`` header carries them."""
        if token is None:
            try:
                token = self.resolve_token()
            except ValueError:
                token = None
        out = [token] if token else []
        out += [v for k, v in self.headers.items() if any(w in k.lower() for w in _SENSITIVE_HEADER_WORDS)]
        parts = _split(self.url)
        if parts is not None and parts.password:
            user, password = unquote(parts.username or ""), unquote(parts.password)
            out += [parts.password, password, f"{user}:{password}"]
            out.append(base64.b64encode(f"{user}:{password}".encode()).decode("ascii"))
        return [s for s in out if s]

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
