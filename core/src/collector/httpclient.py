"""Settings of an outgoing HTTP(S) client: timeout, headers, credentials, TLS.

Part of the public plugin API (:mod:`collector.api`).  A pull receiver that
talks to an HTTP API (Prometheus, Run:ai, ...) subclasses
:class:`HttpClientConfig` next to its own fields, and gets the same
validation, the same names in the configuration and the same secret handling
as every other component::

    class MyConfig(ScheduleConfig, HttpClientConfig):
        url: HttpUrl = Field(description="Base URL of the API.")

    # in the component:
    ctx.telemetry.redactor.add(*config.secrets())          # never logged
    ssl = await asyncio.to_thread(config.ssl_context, f"receivers.{ctx.id}")
    headers = await asyncio.to_thread(config.auth_headers)  # reads token_file each time

Nothing here imports aiohttp: config models are imported at hook time.
"""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, model_validator

from collector.durations import Duration
from collector.errors import ConfigError

__all__ = ["HttpClientConfig", "HttpUrl", "check_http_url"]


def check_http_url(value: str) -> str:
    """An ``http(s)://host[:port][/prefix]`` base URL without credentials, query or fragment; no trailing ``/``."""
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL (for example http://prometheus:9090)")
    if parts.username is not None or parts.password is not None:
        raise ValueError("put credentials in username/password or token, not in the URL")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r}: the base URL takes no query string or fragment")
    return value.rstrip("/")


#: A config field holding a base URL (see :func:`check_http_url`).
HttpUrl = Annotated[str, AfterValidator(check_http_url)]


class HttpClientConfig(BaseModel):
    """Timeout, extra headers, basic or bearer authentication and TLS verification of requests."""

    model_config = ConfigDict(extra="forbid")

    timeout: Duration = Field(30.0, gt=0, description="Time limit of one request (e.g. 30s).")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    username: str | None = Field(None, description="Basic authentication user.")
    password: SecretStr | None = Field(None, description="Basic authentication password.")
    token: SecretStr | None = Field(None, description="Bearer token (use ${VAR} to keep it out of the file).")
    token_file: Path | None = Field(
        None, description="Read the bearer token from this file before every request batch (rotated tokens)."
    )
    ca_file: Path | None = Field(None, description="CA bundle to verify the server with.")
    insecure_skip_verify: bool = Field(False, description="Do not verify the server certificate (testing only).")

    @model_validator(mode="after")
    def _credentials(self) -> HttpClientConfig:
        if self.token is not None and self.token_file is not None:
            raise ValueError("set token or token_file, not both")
        if self.password is not None and self.username is None:
            raise ValueError("password needs a username")
        if self.username is not None and (self.token is not None or self.token_file is not None):
            raise ValueError("use basic authentication (username/password) or a bearer token, not both")
        auth_set = self.username is not None or self.token is not None or self.token_file is not None
        if auth_set and any(h.lower() == "authorization" for h in self.headers):
            raise ValueError("headers.Authorization conflicts with username/token; set one of them")
        return self

    def secrets(self) -> list[str]:
        """Values to register with the log redactor: password, token and credential-like headers."""
        out = [s.get_secret_value() for s in (self.password, self.token) if s is not None]
        sensitive = ("auth", "token", "key", "secret", "cookie", "password")
        out += [v for k, v in self.headers.items() if any(word in k.lower() for word in sensitive)]
        return [s for s in out if s]

    def ssl_context(self, path: str = "") -> ssl.SSLContext | bool:
        """What aiohttp's ``ssl=`` takes: False (no verification), True (system CAs) or a context.

        Blocking (reads ``ca_file``): call it in a thread.  ConfigError at ``path`` when unusable.
        """
        if self.insecure_skip_verify:
            return False
        if self.ca_file is None:
            return True
        try:
            return ssl.create_default_context(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            where = f"{path}.ca_file" if path else "ca_file"
            raise ConfigError(f"cannot load ca_file {str(self.ca_file)!r}: {exc}", where) from None

    def auth_headers(self) -> dict[str, str]:
        """``headers`` plus ``Authorization`` from basic auth, ``token`` or ``token_file``.

        Blocking when ``token_file`` is set (it is read on every call, so a
        rotated token is picked up): call it in a thread.  OSError when the
        file cannot be read.  An empty token (or file) sends no ``Authorization``.
        """
        headers = dict(self.headers)
        if self.username is not None:
            password = self.password.get_secret_value() if self.password is not None else ""
            pair = f"{self.username}:{password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
            return headers
        token = self.token.get_secret_value() if self.token is not None else None
        if self.token_file is not None:
            token = self.token_file.read_text(encoding="utf-8").strip()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers
