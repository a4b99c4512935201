"""The fast path of a guarded HTTP listener: whole, simple POSTs answered without aiohttp's request objects.

aiohttp spends about 35 us of CPU on each request (its request, response and
router objects, its per-connection task) before the receiver sees a byte;
parsing the same request with llhttp (httptools) and writing the answer
straight to the transport costs about 6 us (tests/bench/bench_ingest.py, and
docs/operations.md "Ingest performance").  A listener started with a
:class:`FastRoute` therefore accepts every connection with a
:class:`FastProtocol`, which answers the requests that are plainly ingest:

* ``POST`` over HTTP/1.1 to one of the route's paths (exactly: no query string);
* framed by a single valid ``Content-Length`` of at most ``max_body_bytes``;
* no ``Transfer-Encoding``, no ``Expect``, no ``Upgrade``, no ``Content-Encoding``
  other than ``identity``, no ``Connection`` other than ``keep-alive``.

Anything else -- a GET, a gzip or chunked body, a malformed request, HTTP/1.0
-- and everything after it on that connection goes to aiohttp (the guarded
handler of :mod:`collector.httpserver`), which is given the bytes from the
start of that request on.  The fast path only ever hands over at a request
boundary, so the two parsers never disagree about where a request ends, and
every refusal aiohttp words (400 for bad HTTP, 404, 405, 413 while reading,
415 for an undecodable body) stays exactly as it was.

The listener's limits hold on both paths: the connection cap (503), the
header timeout (408 after a partial request, a plain close after none), the
idle timeout, and the route's ``read_timeout`` for a body that stops arriving
(``timeout_answer``, then the connection is closed).  Requests on one
connection are answered in order: bytes that arrive while one is being
committed wait (reading pauses when they pass ``max_body_bytes``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Protocol, cast

from collector.serverlimits import ConnectionGuard, ErrorBody, raw_response

httptools: Any
try:  # a default dependency of collector-core; without it every request takes aiohttp's path
    import httptools
except ImportError:  # pragma: no cover - exercised only where httptools is missing
    httptools = None

log = logging.getLogger("collector.fastpath")

AVAILABLE = httptools is not None

#: A request line and headers longer than this go to aiohttp (which refuses what is too long).
MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """A complete HTTP answer: status, body, its content type, extra headers; ``close`` ends the connection."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: Mapping[str, str] | None = None
    close: bool = False


FastHandler = Callable[[str, dict[str, str], bytes], Awaitable[Answer]]
"""``(path, headers with lower-case names, body) -> Answer``: the request is a POST to one of the
route's paths, its body whole and at most ``max_body_bytes``, not encoded."""


@dataclass(frozen=True)
class FastRoute:
    """What a listener's fast path takes, and who answers it (see the module docstring)."""

    paths: frozenset[str]
    max_body_bytes: int
    read_timeout: float
    handler: FastHandler
    timeout_answer: Callable[[], Answer]
    """The answer (a 408) for a body that did not arrive within ``read_timeout``; the connection then closes."""
    _paths: frozenset[bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_paths", frozenset(p.encode("ascii") for p in self.paths))


class Deadlines(Protocol):
    """The listener's deadline sweep (collector.httpserver._HeaderDeadlines)."""

    def arm(self, handler: Any, deadline: float) -> None: ...
    def disarm(self, handler: Any) -> None: ...


# -- the answer's bytes ---------------------------------------------------------------------------

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_date_second = -1
_date_line = b""


def _date() -> bytes:
    """``Date: ...\\r\\n``, formatted once a second."""
    global _date_second, _date_line
    now = int(time.time())
    if now != _date_second:
        _date_second = now
        _date_line = b"Date: " + formatdate(now, usegmt=True).encode("ascii") + b"\r\n"
    return _date_line


def render(answer: Answer) -> bytes:
    """The HTTP/1.1 bytes of ``answer``."""
    head = [
        b"HTTP/1.1 %d %s\r\n" % (answer.status, _REASONS.get(answer.status, "Unknown").encode("ascii")),
        _date(),
        b"Server: collector\r\nContent-Length: %d\r\n" % len(answer.body),
    ]
    if answer.content_type:
        head.append(b"Content-Type: " + answer.content_type.encode("latin-1") + b"\r\n")
    if answer.headers:
        head.extend(f"{k}: {v}\r\n".encode("latin-1") for k, v in answer.headers.items())
    if answer.close:
        head.append(b"Connection: close\r\n")
    head.append(b"\r\n")
    return b"".join(head) + answer.body


# -- the protocol -----------------------------------------------------------------------------------

_HEADER, _BODY, _IDLE = 1, 2, 3  # what the armed deadline is for
_SINGLE = frozenset(
    {b"content-length", b"transfer-encoding", b"content-encoding", b"connection", b"expect", b"upgrade"}
)


class FastProtocol(asyncio.Protocol):
    """One connection on the fast path until a request needs aiohttp (see the module docstring)."""

    def __init__(
        self,
        route: FastRoute,
        *,
        guard: ConnectionGuard,
        deadlines: Deadlines,
        error_body: ErrorBody,
        fallback: Callable[[], asyncio.Protocol],
        connections: set[FastProtocol],
    ) -> None:
        self._route = route
        self._guard = guard
        self._deadlines = deadlines
        self._error_body = error_body
        self._fallback = fallback
        self._connections = connections
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._parser: Any = httptools.HttpRequestParser(self) if httptools is not None else None
        self._buf = b""
        self._counted = False
        self._gone = False  # handed over, refused, closed or lost: ignore whatever comes
        self._busy = False  # a request is being answered
        self._paused = False
        self._closing = False  # close once the request in hand is answered (the listener is stopping)
        self._armed = 0  # _HEADER, _BODY, _IDLE or 0
        # The request whose headers are parsed: its url, headers and where its body starts and ends.
        self._url = b""
        self._headers: dict[bytes, bytes] = {}
        self._repeated = False
        self._body_at = 0
        self._end = 0
        self._task: asyncio.Task[None] | None = None  # the request being answered

    # -- httptools callbacks (only for the header block: the body is sliced from the buffer) ----------

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.lower()
        if key in self._headers and key in _SINGLE:
            self._repeated = True
        self._headers.setdefault(key, value)

    # -- connection ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio.Transport subclasses
        self._transport = transport
        guard = self._guard
        if not guard.admit(transport, self._error_body):
            self._gone = True  # data_received ignores whatever the client sends
            return
        self._counted = True
        self._connections.add(self)
        self._arm(_HEADER, guard.limits.header_timeout)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._gone = True
        self._release()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self._guard.open -= 1
        self._connections.discard(self)
        if self._armed:
            self._armed = 0
            self._deadlines.disarm(self)

    def _arm(self, kind: int, seconds: float) -> None:
        self._armed = kind
        self._deadlines.arm(self, self._loop.time() + seconds)

    def _header_timeout(self) -> None:
        """Called by the listener's deadline sweep when the armed deadline passed."""
        kind, self._armed = self._armed, 0
        transport = self._transport
        if self._gone or self._busy or transport is None or not kind:
            return
        if kind == _BODY:
            self._close_with(render(replace(self._route.timeout_answer(), close=True)))
        elif kind == _HEADER and self._buf:
            timeout = self._guard.limits.header_timeout
            self._close_with(
                raw_response(
                    self._error_body,
                    408,
                    "Request Timeout",
                    f"the request headers did not arrive within {timeout:g}s (header_timeout)",
                )
            )
        else:
            self._close_with(b"")

    def _close_with(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._gone = True
        if data:
            transport.write(data)
        transport.close()
        self._release()

    def close(self) -> None:
        """Close the connection (the listener is stopping); a request in hand is answered first."""
        if self._busy:
            self._closing = True
        elif not self._gone:
            self._close_with(b"")

    # -- requests --------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._gone:
            return
        self._buf = self._buf + data if self._buf else data
        if self._busy:
            if not self._paused and len(self._buf) > self._route.max_body_bytes:
                self._paused = True
                assert self._transport is not None
                self._transport.pause_reading()
            return
        self._next()

    def _next(self) -> None:
        """Take the next request from the buffer, or wait for the rest of it."""
        buf = self._buf
        if not buf:
            self._arm(_IDLE, self._guard.limits.idle_timeout)
            return
        if not self._end:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    self._hand_over()
                elif self._armed != _HEADER:
                    self._arm(_HEADER, self._guard.limits.header_timeout)
                return
            if not self._read_headers(buf, end + 4):
                self._hand_over()
                return
        if len(buf) < self._end:
            if self._armed != _BODY:
                self._arm(_BODY, self._route.read_timeout)
            return
        if self._armed:
            self._armed = 0
            self._deadlines.disarm(self)
        body = buf[self._body_at : self._end]
        if body:
            self._parser.feed_data(body)  # back to a request boundary
        self._buf = buf[self._end :]
        path = self._url.decode("ascii")
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in self._headers.items()}
        self._url, self._headers, self._body_at, self._end = b"", {}, 0, 0
        self._busy = True
        # Held here: the loop keeps only a weak reference to a task.
        self._task = self._loop.create_task(self._serve(path, headers, body))

    def _read_headers(self, buf: bytes, size: int) -> bool:
        """Parse the header block of the request at the start of ``buf``; False when it is not for the fast path."""
        self._url, self._headers, self._repeated = b"", {}, False
        parser = self._parser
        try:
            parser.feed_data(buf[:size])
        except Exception:  # httptools.HttpParserError and its kin: aiohttp words the 400
            return False
        h = self._headers
        length = h.get(b"content-length")
        if (
            self._repeated
            or parser.get_method() != b"POST"
            or parser.get_http_version() != "1.1"
            or self._url not in self._route._paths
            or length is None
            or not length.isdigit()
            or b"transfer-encoding" in h
            or b"expect" in h
            or b"upgrade" in h
            or h.get(b"content-encoding", b"identity").strip().lower() != b"identity"
            or h.get(b"connection", b"keep-alive").strip().lower() != b"keep-alive"
        ):
            return False
        n = int(length)
        if n > self._route.max_body_bytes:
            return False
        self._body_at, self._end = size, size + n
        return True

    async def _serve(self, path: str, headers: dict[str, str], body: bytes) -> None:
        try:
            answer = await self._route.handler(path, headers, body)
        except Exception:  # the handler answers its own errors; this is a bug, not the client's fault
            log.exception("the fast path's handler failed for %s", path)
            content_type, doc = self._error_body(
                500, "Internal Server Error", "the request could not be handled; retry later"
            )
            answer = Answer(500, doc, content_type, close=True)
        transport = self._transport
        if self._gone or transport is None or transport.is_closing():
            self._busy = False
            return  # the client went away; what was committed stays committed
        if answer.close or self._closing:
            self._busy = False
            self._close_with(render(answer))
            return
        transport.write(render(answer))
        self._busy = False
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self._next()

    def _hand_over(self) -> None:
        """Give the connection, and the bytes from the current request on, to aiohttp."""
        transport = self._transport
        assert transport is not None
        buf, self._buf = self._buf, b""
        self._gone = True
        self._release()
        handler = self._fallback()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if buf:
            handler.data_received(buf)
