"""The openmeter exporter's HTTP/1.1 client: one POST at a time per kept-alive connection.

aiohttp's client spends about 150 us of CPU on each request (its session, URL, header and
response objects); writing the request's bytes on a kept-alive connection and reading the
answer with llhttp (httptools) costs about 40 us (tests/bench/bench_ingest.py: 100-event
requests are delivered 100 at a time, so this is ~1.1 us per event, on the thread whose GIL
time the intake competes with).  The exporter needs little of HTTP: a POST of bytes it
already has, the status, two headers and at most :data:`ERROR_BODY_LIMIT` bytes of an error
body.  What it must get right:

* **Redirects are never followed**: a 3xx is just a status (see the exporter).
* **Error bodies are bounded**: at most ``limit`` bytes are kept; a connection whose answer
  is longer is closed rather than read to its end.
* **Connections**: kept alive while the server allows (``Connection: close``, HTTP/1.0 and
  answers framed by the end of the connection are not reused); one that sat idle longer than
  :data:`IDLE_REUSE_S` or was closed by the server is not taken from the pool.  A request on a
  reused connection that fails before any byte of an answer is sent once more on a new
  connection (the server dropped it while idle; events carry ids, so a repeat is harmless).
* **TLS**: the exporter's SSL context, with the host name checked (SNI).
* **Credentials in the URL** become an ``Authorization: Basic`` header, as aiohttp did.

Timeouts are the caller's (the sender's ``asyncio.wait_for``); a request cut short closes
its connection.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import httptools

from collector.builtin.openmeter.config import header_problem

#: A kept-alive connection idle for longer is closed rather than reused: servers close
#: theirs after a while (Go's default is 90 s, many proxies 60 s), and a request sent just
#: as the server closes fails.
IDLE_REUSE_S = 30.0
ERROR_BODY_LIMIT = 8192


class ClientError(Exception):
    """The request could not be sent or its answer could not be read (a network problem).

    ``answered``: whether any byte of an answer had arrived (then the request is not sent again).
    """

    answered = True


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    truncated: bool = False

    def text(self) -> str:
        """The body, decoded by its charset (leniently; UTF-8 when unknown)."""
        charset = "utf-8"
        for param in self.headers.get("content-type", "").split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip('"')
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


@dataclass
class _Exchange:
    """What one response is being read into."""

    future: asyncio.Future[Answer]
    limit: int
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: list[bytes] = field(default_factory=list)
    size: int = 0
    received: bool = False  # any byte of an answer arrived
    headers_done: bool = False


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: _Exchange | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = time.monotonic()
        self._header_name = b""

    # -- asyncio ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:  # nothing asked: a server talking out of turn
            self.close()
            return
        self.exchange.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ClientError(f"the answer is not valid HTTP: {exc}"))

    def eof_received(self) -> bool | None:
        self.reusable = False
        self._end_of_answer()
        return None  # close the transport

    def connection_lost(self, exc: BaseException | None) -> None:
        self.closed = True
        self._end_of_answer()
        self._fail(ClientError(f"the connection was closed: {exc}" if exc else "the connection was closed"))

    def _end_of_answer(self) -> None:
        """The server closed the connection: an answer whose headers arrived may be complete."""
        ex = self.exchange
        if ex is None or not ex.headers_done:
            return
        framed = "content-length" in ex.headers or "transfer-encoding" in ex.headers
        if not framed or 200 <= ex.status < 300:
            # A body framed by the end of the connection ends here; and a 2xx was said already (the
            # exporter reads no body of a 2xx), whatever became of the rest.
            self._finish(truncated=False)

    # -- httptools --------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.exchange is not None:
            self.exchange.headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        if self.exchange is not None:
            self.exchange.status = self.parser.get_status_code()
            self.exchange.headers_done = self.exchange.status < 100 or self.exchange.status >= 200

    def on_body(self, chunk: bytes) -> None:
        ex = self.exchange
        if ex is None:
            return
        room = ex.limit - ex.size
        if room > 0:
            ex.body.append(chunk[:room])
            ex.size += min(len(chunk), room)
        if len(chunk) > room:  # more than we keep: answer now, and never read the rest
            self._finish(truncated=True)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is None:
            return
        if 100 <= ex.status < 200:  # an interim answer (103 Early Hints...): the final one follows
            ex.status, ex.headers, ex.body, ex.size, ex.headers_done = 0, {}, [], 0, False
            return
        self._finish(truncated=False)

    # -- ours -------------------------------------------------------------------------------------

    def _finish(self, *, truncated: bool) -> None:
        ex, self.exchange = self.exchange, None
        if ex is None:
            return
        if truncated or not self.parser.should_keep_alive():
            self.close()
        if not ex.future.done():
            ex.future.set_result(Answer(ex.status, ex.headers, b"".join(ex.body), truncated))

    def _fail(self, error: ClientError) -> None:
        ex, self.exchange = self.exchange, None
        self.close()
        if ex is not None and not ex.future.done():
            ex.future.set_exception(error)

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def usable(self) -> bool:
        return (
            not self.closed
            and self.reusable
            and self.transport is not None
            and not self.transport.is_closing()
            and time.monotonic() - self.idle_since < IDLE_REUSE_S
        )


class PostClient:
    """POSTs to one URL over a pool of kept-alive connections (see the module docstring)."""

    def __init__(self, url: str, headers: dict[str, str], ssl_context: ssl.SSLContext | None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("not an http(s) URL")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl_context if parts.scheme == "https" else None
        if parts.scheme == "https" and self._ssl is None:
            self._ssl = ssl.create_default_context()
        for name, value in headers.items():  # the configuration refuses these already; the exporter adds its own
            problem = header_problem(name, value)
            if problem is not None:
                raise ValueError(problem)
        host = f"[{self._host}]" if ":" in self._host else self._host
        default_port = self._port == (443 if parts.scheme == "https" else 80)
        all_headers = {"Host": host if default_port else f"{host}:{self._port}", **headers}
        if parts.username is not None and not any(k.lower() == "authorization" for k in headers):
            user, password = unquote(parts.username), unquote(parts.password or "")
            all_headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        lines = [f"POST {target} HTTP/1.1"] + [f"{k}: {v}" for k, v in all_headers.items()]
        self._head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
        self._idle: list[_Connection] = []

    async def post(self, body: bytes, *, limit: int = ERROR_BODY_LIMIT) -> Answer:
        """POST ``body``; the answer, its body cut at ``limit`` bytes.  Raises :class:`ClientError`."""
        request = b"%s%d\r\n\r\n%s" % (self._head, len(body), body)
        while self._idle:
            conn = self._idle.pop()
            if not conn.usable():
                conn.close()
                continue
            try:
                return await self._exchange(conn, request, limit)
            except ClientError as exc:
                if exc.answered:
                    raise
                # The server had dropped the kept-alive connection: once more, on a new one.
                break
        return await self._exchange(await self._connect(), request, limit)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                _Connection,
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._host if self._ssl is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ClientError(f"cannot connect to {self._host}:{self._port}: {exc}") from None
        return conn

    async def _exchange(self, conn: _Connection, request: bytes, limit: int) -> Answer:
        assert conn.transport is not None
        ex = _Exchange(asyncio.get_running_loop().create_future(), limit)
        conn.exchange = ex
        done = False
        try:
            conn.transport.write(request)
            answer = await ex.future
            done = True
        except ClientError as exc:
            exc.answered = ex.received
            raise
        finally:
            if not done:  # cancelled (a timeout) or failed: the connection's state is unknown
                conn.exchange = None
                conn.close()
        conn.idle_since = time.monotonic()
        if conn.usable():
            self._idle.append(conn)
        else:
            conn.close()
        return answer

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
