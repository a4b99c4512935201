"""The ``openmeter`` exporter: one POST per batch, every status classified."""

from __future__ import annotations

import email.utils
import ssl
import time
from typing import Any

import aiohttp
import orjson

from collector.builtin.openmeter.config import OpenMeterExporterConfig
from collector.components import Event, Exporter
from collector.errors import AuthError, ConfigError, PermanentError, RetryableError
from collector.events import OPENMETER

BATCH_TYPE = "application/cloudevents-batch+json"
_PERMANENT = {400, 413, 422}
_AUTH = {401, 403}


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
        else:  # 404, 405, 3xx...: most likely a wrong URL; kept and retried, never dropped
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
        if token:
            ctx.telemetry.redactor.add(token)
            self._headers["Authorization"] = f"Bearer {token}"
        self._session: aiohttp.ClientSession | None = None

    async def _start(self) -> None:
        ssl_ctx: ssl.SSLContext | bool = True
        if self.config.insecure_skip_verify:
            ssl_ctx = False
        elif self.config.ca_file is not None:
            ssl_ctx = ssl.create_default_context(cafile=str(self.config.ca_file))
        connector = aiohttp.TCPConnector(limit=self.config.max_in_flight * 2, ssl=ssl_ctx)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            headers=self._headers,
        )
        self.log.info(
            "openmeter exporter sending to %s (API %s)%s",
            self.endpoint,
            self.config.resolved_api(),
            "" if "Authorization" in self._headers else " without a token",
        )

    async def _shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def export(self, events: list[Event]) -> None:
        assert self._session is not None, "exporter not started"
        body = orjson.dumps(events)
        try:
            async with self._session.post(self.endpoint, data=body) as resp:
                status = resp.status
                if 200 <= status < 300:
                    return
                text = (await resp.text(errors="replace"))[:4096]
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        except aiohttp.ClientError as exc:
            raise NetworkRetry(f"{type(exc).__name__}: {exc}") from None
        detail = f"OpenMeter answered {status} for {len(events)} event(s): {text[:300]}"
        if status in _PERMANENT:
            raise PermanentError(detail, status=status, body=text)
        if status in _AUTH:
            raise AuthError(detail, status=status)
        raise HttpStatusRetry(detail, status, retry_after)
