"""The limits of an exposed HTTP listener, and the handle of a running one (cheap to import: no aiohttp).

:class:`ServerLimitsConfig` is the configuration a receiver's listener
section inherits (``header_timeout``, ``idle_timeout``, ``max_connections``);
``collector.api.start_http_server`` serves an aiohttp application with them
(the work is in :mod:`collector.httpserver`, imported only when a server
starts) and returns an :class:`HttpServerHandle`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from collector.clock import Clock
from collector.durations import Duration

LOG_INTERVAL = 10.0
"""Seconds between two log lines about the same kind of repeated client or accept error."""

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 1024

Log = logging.Logger | logging.LoggerAdapter[Any]

ErrorBody = Callable[[int, str, str], tuple[str, bytes]]
"""``(status, title, detail) -> (content type, body)``: how a listener words the errors it answers itself
(408 header timeout, 503 over max_connections, 400/415 malformed HTTP).  The default is an RFC 7807
``application/problem+json`` document."""


@dataclass(frozen=True)
class ServerLimits:
    """What a guarded listener enforces (seconds, seconds, connections)."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS


class ServerLimitsConfig(BaseModel):
    """Config fields of a listener's limits, for a receiver's config model to inherit.

    The subclass sets ``model_config`` (for example ``extra="forbid"``); :meth:`limits` gives the
    :class:`ServerLimits` to pass to ``start_http_server``.
    """

    header_timeout: Duration = Field(
        DEFAULT_HEADER_TIMEOUT,
        gt=0,
        description="How long a client may take to send a request's line and headers, from the connection's "
        "opening (or a later request's first byte) -- then 408 and the connection is closed (10s).",
    )
    idle_timeout: Duration = Field(
        DEFAULT_IDLE_TIMEOUT,
        gt=0,
        description="Close a kept-alive connection that sends no request for this long (60s, 5m).",
    )
    max_connections: int = Field(
        DEFAULT_MAX_CONNECTIONS,
        gt=0,
        description="Most open connections; one more is answered 503 (Retry-After: 1) at once and closed. Keep it "
        "below the process's file descriptor limit (ulimit -n).",
    )

    def limits(self) -> ServerLimits:
        return ServerLimits(self.header_timeout, self.idle_timeout, self.max_connections)


class Throttle:
    """Lets one event through per ``interval`` seconds and counts the rest."""

    def __init__(self, clock: Clock, interval: float = LOG_INTERVAL) -> None:
        self.clock = clock
        self.interval = interval
        self._last: float | None = None
        self._count = 0

    def hit(self) -> int | None:
        """None while within the interval; else the number of events since the last one let through
        (this one included), and the interval starts again."""
        self._count += 1
        now = self.clock.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return None
        self._last = now
        count, self._count = self._count, 0
        return count


class ConnectionGuard:
    """The open connections of one listener and its limits; the log lines about them."""

    def __init__(self, name: str, limits: ServerLimits, log: Log, clock: Clock) -> None:
        self.name = name
        self.limits = limits
        self.log = log
        self.open = 0
        self.refused = 0
        self._refusals = Throttle(clock)
        self._protocol_errors = Throttle(clock)

    def admit(self, transport: Any, error_body: ErrorBody) -> bool:
        """Count a new connection; over ``max_connections`` answer it 503 at once, close it and return False."""
        if self.open >= self.limits.max_connections:
            transport.write(
                raw_response(
                    error_body,
                    503,
                    "Service Unavailable",
                    f"too many open connections (max_connections={self.limits.max_connections}); retry shortly",
                    {"Retry-After": "1"},
                )
            )
            transport.close()
            self.refuse()
            return False
        self.open += 1
        return True

    def refuse(self) -> None:
        self.refused += 1
        n = self._refusals.hit()
        if n is not None:
            self.log.warning(
                "receiver %s: %d connection(s) refused with 503: max_connections=%d are open",
                self.name,
                n,
                self.limits.max_connections,
            )

    def protocol_error(self, remote: str | None, reason: str, quiet: bool) -> None:
        n = self._protocol_errors.hit()
        if n is not None:
            more = f" ({n - 1} more since the last report)" if n > 1 else ""
            self.log.log(
                logging.DEBUG if quiet else logging.INFO,
                "receiver %s: malformed HTTP request from %s: %s%s",
                self.name,
                remote or "unknown",
                reason,
                more,
            )


class HttpServerHandle:
    """A listener started by ``start_http_server``: its port, its connection numbers, and how to stop it.

    ``await stop_accepting()`` closes the listening socket (requests in progress go on);
    ``await stop()`` also closes every connection (it stops accepting first if that was not done).
    """

    def __init__(
        self,
        *,
        port: int,
        guard: ConnectionGuard,
        stop_accepting: Callable[[], Awaitable[None]],
        cleanup: Callable[[], Awaitable[None]],
    ) -> None:
        self.port = port
        self._guard = guard
        self._stop_accepting = stop_accepting
        self._cleanup = cleanup
        self._accepting = True
        self._stopped = False

    @property
    def connections(self) -> int:
        """Connections open now."""
        return self._guard.open

    @property
    def refused_connections(self) -> int:
        """Connections refused with 503 because ``max_connections`` were open, since the start."""
        return self._guard.refused

    def health(self) -> dict[str, int]:
        return {"connections": self.connections, "refused_connections": self.refused_connections}

    def protocol_error(self, remote: str | None, reason: str, quiet: bool = False) -> None:
        """Log a client's malformed request (a body that cannot be read): at most one line per interval."""
        self._guard.protocol_error(remote, reason, quiet)

    async def stop_accepting(self) -> None:
        if self._accepting:
            self._accepting = False
            await self._stop_accepting()

    async def stop(self) -> None:
        await self.stop_accepting()
        if not self._stopped:
            self._stopped = True
            await self._cleanup()


def raw_response(
    error_body: ErrorBody, status: int, title: str, detail: str, headers: dict[str, str] | None = None
) -> bytes:
    """A complete HTTP/1.1 error response, closing the connection."""
    content_type, body = error_body(status, title, detail)
    lines = [
        f"HTTP/1.1 {status} {title}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body
