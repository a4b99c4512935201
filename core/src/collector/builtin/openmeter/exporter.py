"""The ``openmeter`` exporter: one POST per batch, every status classified.

Redirects are never followed: a 3xx is a retryable failure (class ``http_3xx``)
and logged as an error naming the status and the ``Location``, so that events
are counted as delivered only when the configured URL itself answered 2xx.
Error bodies are read up to :data:`ERROR_BODY_LIMIT` bytes, never whole, and
every text the exporter hands on (errors shown in ``/health``, bodies kept with
dead letters) has the configured secrets masked.
"""

from __future__ import annotations

import email.utils
import ssl
import time
from typing import Any

import orjson

from collector.builtin.openmeter import client
from collector.builtin.openmeter.config import OpenMeterExporterConfig
from collector.components import Event, Exporter
from collector.errors import AuthError, ConfigError, PermanentError, RetryableError
from collector.events import OPENMETER

BATCH_TYPE = "application/cloudevents-batch+json"
_PERMANENT = {400, 413, 422}
_AUTH = {401, 403}
#: Most bytes of an error body that are read (and kept with a dead letter);
#: the rest is never read: the connection is closed instead.
ERROR_BODY_LIMIT = client.ERROR_BODY_LIMIT
#: How much of the body goes into the error message (``/health`` ``last_error``).
_DETAIL_CHARS = 300


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


class HttpStatusRetry(RetryableError):
    def __init__(self, message: str, status: int, retry_after: float | None) -> None:
        super().__init__(message, retry_after)
        self.status = status
        if status in (408, 429):
            self.klass = f"http_{status}"
        elif status >= 500:
            self.klass = "http_5xx"
        elif 300 <= status < 400:  # a redirect, never followed: delivered means the configured URL said 2xx
            self.klass = "http_3xx"
        else:  # 404, 405...: most likely a wrong URL; kept and retried, never dropped
            self.klass = "http_4xx" if status >= 400 else "http_other"


class NetworkRetry(RetryableError):
    klass = "network"


class OpenMeterExporter(Exporter[OpenMeterExporterConfig]):
    # OpenMeter refuses events that break its rules (400): the pipeline checks
    # them before the queue, so the client hears it instead of the dead letters.
    requires = (OPENMETER,)

    def __init__(self, ctx: Any, config: OpenMeterExporterConfig) -> None:
        super().__init__(ctx, config)
        try:
            token = config.resolve_token()
        except ValueError as exc:
            raise ConfigError(str(exc), f"exporters.{ctx.id}.token_file") from None
        self.endpoint = config.endpoint()
        self._headers = {"Content-Type": BATCH_TYPE, "User-Agent": "collector/0.1", **config.headers}
        self._redactor = ctx.telemetry.redactor
        # Masked wherever text is logged, stored or shown: the token, credential-like
        # headers and credentials in the URL (also as a Basic header would carry them).
        self._redactor.add(*config.secrets(token))
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._client: client.PostClient | None = None
        self._redirect_logged: tuple[int, str] | None = None

    async def _start(self) -> None:
        ssl_ctx: ssl.SSLContext | None = None
        if self.config.insecure_skip_verify:
            ssl_ctx = ssl.create_default_context()
            ssl_ctx.check_hostname = False
            ssl_ctx.verify_mode = ssl.CERT_NONE
        elif self.config.ca_file is not None:
            ssl_ctx = ssl.create_default_context(cafile=str(self.config.ca_file))
        self._client = client.PostClient(self.endpoint, self._headers, ssl_ctx)
        self.log.info(
            "openmeter exporter sending to %s (API %s)%s",
            self.config.display_url(self.endpoint),
            self.config.resolved_api(),
            "" if "Authorization" in self._headers else " without a token",
        )

    async def _shutdown(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def export(self, events: list[Event]) -> None:
        assert self._client is not None, "exporter not started"
        body = orjson.dumps(events)
        scrub = self._redactor.scrub
        try:
            # Never follow a redirect: a 301/302/303 followed as a body-less GET would count the
            # target's 2xx as delivered, and a 307/308 would send the token wherever Location says.
            answer = await self._client.post(body, limit=ERROR_BODY_LIMIT)
        except client.ClientError as exc:
            raise NetworkRetry(scrub(f"{type(exc).__name__}: {exc}")) from None
        status = answer.status
        if 200 <= status < 300:
            self._redirect_logged = None
            return
        location = answer.headers.get("location")
        retry_after = parse_retry_after(answer.headers.get("retry-after"))
        text = scrub(answer.text())
        if 300 <= status < 400:
            where = scrub(self.config.display_url(location))[:200] if location else "no Location"
            detail = (
                f"OpenMeter answered {status} redirect to {where} for {len(events)} event(s); "
                "redirects are not followed: check the exporter's url"
            )
            if self._redirect_logged != (status, where):  # once per redirect, not at every retry
                self._redirect_logged = (status, where)
                self.log.error("%s; the events are kept and retried", detail)
            raise HttpStatusRetry(detail, status, retry_after)
        detail = f"OpenMeter answered {status} for {len(events)} event(s): {text[:_DETAIL_CHARS]}"
        if status in _PERMANENT:
            raise PermanentError(detail, status=status, body=text)
        if status in _AUTH:
            raise AuthError(detail, status=status)
        raise HttpStatusRetry(detail, status, retry_after)
