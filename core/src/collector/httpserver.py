"""An aiohttp listener with the limits an exposed port needs (issue 10); imported only when one starts.

Plugins reach it through ``collector.api.start_http_server``; the settings and
the handle are in :mod:`collector.serverlimits` (cheap to import).

aiohttp alone keeps a connection that sends nothing, or its headers one byte
at a time, open for an hour, accepts connections until the process runs out
of file descriptors, answers its own protocol errors (a Content-Length beside
a Transfer-Encoding, a broken request line) with ``text/plain`` plus a
multi-line traceback in the log, and asyncio logs a traceback for every
failed ``accept()`` once descriptors run out.  :func:`start_http_server`
serves an :class:`aiohttp.web.Application` with:

* ``header_timeout``: a new connection must complete its request line and
  headers within it, and so must every later request on a kept-alive
  connection, counted from its first byte.  A client that sent part of a
  request gets a 408; one that sent nothing is just closed.
* ``idle_timeout``: a kept-alive connection with no request is closed after
  it (aiohttp's ``keepalive_timeout``).
* ``max_connections``: a connection over the limit is answered 503 with
  ``Retry-After: 1`` at once and closed, before anything is read.
* aiohttp's protocol errors answered as an error document (400, or 415 for a
  Content-Encoding it cannot decode) and logged as one line, at most one line
  per interval with a count.
* :class:`AcceptErrorLog`: asyncio's traceback per failed ``accept()``
  (EMFILE, ENFILE, ENOBUFS, ENOMEM) replaced by one warning per interval with
  a count, once per event loop however many listeners run on it.

The error documents are RFC 7807 ``application/problem+json`` unless the
caller passes ``error_body`` (the OTLP receiver answers a ``google.rpc.Status``).
"""

from __future__ import annotations

import asyncio
import errno
import weakref
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, ContentEncodingError, HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from collector import fastpath
from collector.clock import Clock
from collector.fastpath import FastRoute
from collector.serverlimits import (
    LOG_INTERVAL,
    ConnectionGuard,
    ErrorBody,
    HttpServerHandle,
    Log,
    ServerLimits,
    Throttle,
    raw_response,
)

SUPPORTED_ENCODINGS: tuple[str, ...] = ("gzip", "deflate", "identity")
_MAX_DETAIL = 1000


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def problem_body(status: int, title: str, detail: str) -> tuple[str, bytes]:
    """The default :data:`~collector.serverlimits.ErrorBody`: an RFC 7807 problem document."""
    doc = {"type": "about:blank", "title": title, "status": status, "detail": _shorten(detail, _MAX_DETAIL)}
    return "application/problem+json", orjson.dumps(doc)


class _GuardedHandler(RequestHandler):
    """aiohttp's connection handler with the header timeout, the connection cap and error documents.

    Relies on RequestHandler attributes that are not public (``_request_count``,
    ``_request_in_progress``, ``_messages``, ``_force_close``, ``_close``);
    core/tests/test_http_hardening.py and plugins/otlp/tests/test_http_limits.py pin the behaviour.
    """

    def __init__(
        self, manager: Any, *, guard: ConnectionGuard, error_body: ErrorBody, deadlines: _HeaderDeadlines, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._error_body = error_body
        self._deadlines = deadlines
        self._counted = False
        self._header_armed = False
        self._armed_count = 0
        self._partial = False

    # -- the connection cap ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._guard.admit(transport, self._error_body):
            self._force_close = True  # data_received ignores whatever the client sends
            return
        self._counted = True
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            self._guard.open -= 1
        self._disarm()
        super().connection_lost(exc)

    # -- the header timeout ----------------------------------------------------------------------

    # A deadline in a dict that one sweep per listener checks, not a TimerHandle per request:
    # scheduling and cancelling a timer for every request cost several percent of ingest.

    def _arm(self) -> None:
        self._armed_count = self._request_count
        self._partial = False
        self._header_armed = True
        self._deadlines.arm(self, self._loop.time() + self._guard.limits.header_timeout)

    def _disarm(self) -> None:
        if self._header_armed:
            self._header_armed = False
            self._deadlines.disarm(self)

    def data_received(self, data: bytes) -> None:
        if self._force_close or self._close:
            return
        if data and not self._header_armed and not self._request_in_progress and not self._messages:
            self._arm()  # the first byte of a later request on a kept-alive connection
        if data:
            self._partial = True
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._disarm()  # the headers are complete

    def _header_timeout(self) -> None:
        self._header_armed = False
        transport = self.transport
        if self._force_close or self._close or transport is None:
            return
        if self._request_in_progress or self._messages or self._request_count != self._armed_count:
            return
        if self._partial and transport.get_write_buffer_size() == 0:
            transport.write(
                raw_response(
                    self._error_body,
                    408,
                    "Request Timeout",
                    f"the request headers did not arrive within {self._guard.limits.header_timeout:g}s "
                    "(header_timeout)",
                )
            )
        self.force_close()

    # -- aiohttp's own protocol errors -----------------------------------------------------------

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        reason = _shorten(" ".join(str(exc.message or exc).split()), 200)
        # Non-HTTP traffic (TLS to a plain port, a port scanner) is common on open ports: debug only.
        quiet = isinstance(exc, BadHttpMethod) and self._request_count == 1
        self._guard.protocol_error(request.remote, reason, quiet)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was partly sent already; cannot send the error")
        if isinstance(exc, ContentEncodingError):
            status, title = 415, "Unsupported Media Type"
            detail = (
                f"the Content-Encoding cannot be decoded here ({reason}); send the body uncompressed or with one "
                f"of {', '.join(SUPPORTED_ENCODINGS)}"
            )
        else:
            status, title = 400, "Bad Request"
            detail = f"the request is not valid HTTP/1.1: {reason}"
        content_type, body = self._error_body(status, title, detail)
        resp = web.Response(status=status, body=body, headers={"Content-Type": content_type})
        resp.force_close()
        return resp


class _HeaderDeadlines:
    """The header deadlines of one listener's connections, checked by one recurring sweep.

    The sweep runs every quarter of ``header_timeout`` (at most every second), so a
    slow client is cut off between 1x and 1.25x the timeout; it runs only while
    some connection is waiting for headers.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._loop = loop
        self._interval = min(1.0, timeout / 4)
        self._due: dict[_GuardedHandler | fastpath.FastProtocol, float] = {}
        self._sweep: asyncio.TimerHandle | None = None

    def arm(self, handler: _GuardedHandler | fastpath.FastProtocol, deadline: float) -> None:
        self._due[handler] = deadline
        if self._sweep is None:
            self._sweep = self._loop.call_later(self._interval, self._run)

    def disarm(self, handler: _GuardedHandler | fastpath.FastProtocol) -> None:
        self._due.pop(handler, None)

    def _run(self) -> None:
        self._sweep = None
        now = self._loop.time()
        expired = [h for h, deadline in self._due.items() if deadline <= now]
        for handler in expired:
            del self._due[handler]
            handler._header_timeout()
        if self._due:
            self._sweep = self._loop.call_later(self._interval, self._run)

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._due.clear()


class GuardedSite(web.BaseSite):
    """A TCP listener for ``runner`` whose connections are :class:`_GuardedHandler`\\ s.

    Create the runner with ``keepalive_timeout=limits.idle_timeout`` (see :func:`runner_options`).
    """

    def __init__(
        self,
        runner: web.AppRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        *,
        error_body: ErrorBody = problem_body,
        ssl_context: Any = None,
        backlog: int = 1024,
        reuse_port: bool | None = None,
        fast: FastRoute | None = None,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=backlog)
        self._fast = fast if fastpath.AVAILABLE else None
        self.fast_connections: set[fastpath.FastProtocol] = set()
        self._reuse_port = reuse_port
        self._host = host
        self._port = port
        self.guard = guard
        self.error_body = error_body
        self.port: int | None = None
        self._deadlines: _HeaderDeadlines | None = None

    def close_fast_connections(self) -> None:
        """Close the connections still on the fast path (aiohttp closes its own)."""
        for protocol in list(self.fast_connections):
            protocol.close()

    def stop_sweeping(self) -> None:
        """Cancel the header-deadline sweep (the listener is going away)."""
        if self._deadlines is not None:
            self._deadlines.close()

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self.port or self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        # The keyword arguments aiohttp's Server passes to each RequestHandler it makes.
        kwargs = dict(server._kwargs)
        guard, error_body = self.guard, self.error_body
        deadlines = self._deadlines = _HeaderDeadlines(loop, guard.limits.header_timeout)

        def aiohttp_handler() -> _GuardedHandler:
            return _GuardedHandler(server, loop=loop, guard=guard, error_body=error_body, deadlines=deadlines, **kwargs)

        factory: Callable[[], asyncio.Protocol] = aiohttp_handler
        fast, connections = self._fast, self.fast_connections
        if fast is not None:

            def factory() -> asyncio.Protocol:
                return fastpath.FastProtocol(
                    fast,
                    guard=guard,
                    deadlines=deadlines,
                    error_body=error_body,
                    fallback=aiohttp_handler,
                    connections=connections,
                )

        self._server = await loop.create_server(
            factory,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
            reuse_port=self._reuse_port,
        )
        sockets: list[Any] = list(self._server.sockets or [])
        self.port = sockets[0].getsockname()[1] if sockets else self._port


def runner_options(limits: ServerLimits, log: Log) -> dict[str, Any]:
    """Keyword arguments for :class:`aiohttp.web.AppRunner` that go with :class:`GuardedSite`."""
    return {
        "access_log": None,
        "handle_signals": False,
        "keepalive_timeout": limits.idle_timeout,
        "logger": log,  # aiohttp's own error lines go through the collector's (one-line JSON) logging
    }


_ACCEPT_MESSAGE = "socket.accept() out of system resource"
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class AcceptErrorLog:
    """An event loop exception handler that turns asyncio's traceback per failed ``accept()`` into one
    warning per interval with a count; every other report goes to the handler that was there before."""

    def __init__(self, log: Log, clock: Clock, interval: float = LOG_INTERVAL) -> None:
        self.log = log
        self._throttle = Throttle(clock, interval)
        self._previous: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        loop.set_exception_handler(self._handle)

    def uninstall(self) -> None:
        loop = self._loop
        if loop is not None and loop.get_exception_handler() == self._handle:
            loop.set_exception_handler(self._previous)
        self._loop = None

    def _handle(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if context.get("message") == _ACCEPT_MESSAGE or (
            isinstance(exc, OSError) and exc.errno in _RESOURCE_ERRNOS and "socket" in context
        ):
            n = self._throttle.hit()
            if n is not None:
                self.log.warning(
                    "accepting a connection failed %d time(s) in the last %gs: %s; asyncio retries every second. "
                    "Raise the file descriptor limit (ulimit -n) or lower max_connections",
                    n,
                    self._throttle.interval,
                    exc if exc is not None else context.get("message"),
                )
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)


# One AcceptErrorLog per event loop, shared by the listeners on it (installed by the first, removed by the last).
_accept_logs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, list[Any]] = weakref.WeakKeyDictionary()


def _acquire_accept_log(loop: asyncio.AbstractEventLoop, log: Log, clock: Clock) -> None:
    entry = _accept_logs.get(loop)
    if entry is None:
        accept_log = AcceptErrorLog(log, clock)
        accept_log.install(loop)
        _accept_logs[loop] = [accept_log, 1]
    else:
        entry[1] += 1


def _release_accept_log(loop: asyncio.AbstractEventLoop) -> None:
    entry = _accept_logs.get(loop)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] <= 0:
        del _accept_logs[loop]
        entry[0].uninstall()


async def start_http_server(
    app: web.Application,
    host: str,
    port: int,
    *,
    name: str,
    limits: ServerLimits,
    clock: Clock,
    log: Log,
    ssl: Any = None,
    error_body: ErrorBody | None = None,
    backlog: int = 1024,
    reuse_port: bool = False,
    fast: FastRoute | None = None,
) -> HttpServerHandle:
    """Serve ``app`` on ``host:port`` (0: a free port) with ``limits``; see ``collector.api.start_http_server``.

    ``fast``: requests that are plainly ingest are answered by ``fast.handler`` without aiohttp's request
    objects (:mod:`collector.fastpath`); everything else by ``app``."""
    runner = web.AppRunner(app, **runner_options(limits, log))
    await runner.setup()
    guard = ConnectionGuard(name, limits, log, clock)
    site = GuardedSite(
        runner,
        host,
        port,
        guard,
        error_body=error_body or problem_body,
        ssl_context=ssl,
        backlog=backlog,
        reuse_port=reuse_port or None,
        fast=fast,
    )
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    loop = asyncio.get_running_loop()
    _acquire_accept_log(loop, log, clock)
    released = False

    def release() -> None:
        nonlocal released
        if not released:
            released = True
            _release_accept_log(loop)

    async def stop_accepting() -> None:
        release()
        await site.stop()

    async def cleanup() -> None:
        release()
        site.close_fast_connections()
        await runner.cleanup()
        site.stop_sweeping()

    assert site.port is not None
    return HttpServerHandle(port=site.port, guard=guard, stop_accepting=stop_accepting, cleanup=cleanup)
