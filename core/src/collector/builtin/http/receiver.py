"""The ``http`` receiver: OpenMeter's ingest API in front of the durable queue.

``POST /api/v1/events`` answers 204 and ``POST /api/v3/openmeter/events``
answers 202, each only after every target queue has committed the events.
Everything else gets an RFC 7807 problem document saying what to fix:

=====  ==========================================================
400    malformed JSON, wrong shape, invalid events (index + field; the
       first 100, with ``invalid_count``), a body that cannot be decoded
       (broken chunking, bad gzip), a request that is not valid HTTP
401    missing or wrong bearer token (when tokens are configured)
404    unknown path
405    method other than POST
408    the headers did not arrive within ``header_timeout`` or the
       body within ``read_timeout`` (then the connection is closed)
413    body over ``max_body_bytes`` or more than ``max_events``
415    content type other than the CloudEvents / JSON ones, or a
       Content-Encoding other than gzip, deflate, identity
503    the queue refuses data (full or disk full), or more than
       ``max_connections`` are open, with Retry-After
=====  ==========================================================
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from operator import is_
from types import MappingProxyType
from typing import Any

import orjson
from aiohttp import web

from collector.auth import BearerAuth
from collector.builtin.http.config import HttpReceiverConfig
from collector.builtin.http.intake import (
    IntakeError,
    check_content_encoding,
    collect_errors,
    json_inside,
    parse_events,
    parse_records,
    problem,
    shorten,
)
from collector.components import Meta, Receiver
from collector.endpoints import parse_endpoint
from collector.errors import BackpressureError, PermanentError, RecordError
from collector.events import OPENMETER, EncodedEvents, fill_defaults, validate_event
from collector.fastpath import Answer, FastRoute
from collector.httpserver import start_http_server
from collector.serverlimits import HttpServerHandle
from collector.telemetry import hot_inc

# CloudEvents posted to the ingest API were checked against OpenMeter's rules
# on arrival (it is OpenMeter's API, whatever the exporter): the pipeline need
# not check them again unless a processor changes them.
_CHECKED = frozenset({OPENMETER})
_RAW_JSON = MappingProxyType({"format": "json"})

V1_PATH = "/api/v1/events"
V3_PATH = "/api/v3/openmeter/events"
_SUCCESS = {V1_PATH: 204, V3_PATH: 202}
_PROBLEM = "application/problem+json"


def problem_answer(
    status: int,
    title: str,
    detail: str,
    errors: list[RecordError] | None = None,
    events: list[Any] | None = None,
    headers: dict[str, str] | None = None,
    total: int | None = None,
    unchecked: int = 0,
) -> Answer:
    body = problem(status, title, detail, errors, events=events, total=total, unchecked=unchecked)
    return Answer(status, orjson.dumps(body), _PROBLEM, headers)


def to_web(answer: Answer) -> web.Response:
    """The aiohttp response of ``answer`` (the fast path writes its bytes itself)."""
    if not answer.body:
        return web.Response(status=answer.status, headers=answer.headers)
    return web.Response(
        status=answer.status, body=answer.body, content_type=answer.content_type, headers=answer.headers
    )


_ACCEPTED = {path: Answer(status) for path, status in _SUCCESS.items()}


class HttpReceiver(Receiver[HttpReceiverConfig]):
    def __init__(self, ctx: Any, config: HttpReceiverConfig) -> None:
        super().__init__(ctx, config)
        self._auth = BearerAuth(config.auth.bearer_tokens(f"receivers.{ctx.id}.auth", ctx.telemetry.redactor))
        self._server: HttpServerHandle | None = None
        self._limits = config.limits()
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self.port: int | None = None
        self.raw = config.format == "json"
        self._validated = Meta(receiver=ctx.id, satisfies=_CHECKED)
        self._raw_meta = Meta(receiver=ctx.id, extra=_RAW_JSON)
        self.paths = (config.path,) if self.raw else (V1_PATH, V3_PATH)
        m = ctx.telemetry.metrics
        self._requests = m.requests
        self._requests_by_code: dict[int, Any] = {}  # labels() costs ~1.5 us: resolve once per code
        self._refused = m.refused
        self._received = m.received

    # -- lifecycle -------------------------------------------------------------

    def app(self) -> web.Application:
        # aiohttp enforces client_max_size while reading, so a huge chunked body
        # never sits in memory; +1 lets us tell "exactly the limit" from "over".
        app = web.Application(client_max_size=self.config.max_body_bytes + 1)
        for path in self.paths:
            app.router.add_route("*", path, self._handle)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    async def _start(self) -> None:
        host, port = parse_endpoint(self.config.endpoint)
        ssl_ctx = self.config.tls.server_context(f"receivers.{self.id}.tls") if self.config.tls else None
        try:
            self._server = await start_http_server(
                self.app(),
                host,
                port,
                name=self.id,
                limits=self._limits,
                clock=self.ctx.clock,
                log=self.log,
                ssl=ssl_ctx,
                reuse_port=self.ctx.shared_listeners,
                fast=self.fast_route(),
            )
        except OSError as exc:
            raise OSError(
                exc.errno, f"receiver {self.id} cannot listen on {self.config.endpoint}: {exc.strerror}"
            ) from None
        self.port = self._server.port
        scheme = "https" if ssl_ctx else "http"
        self.log.info(
            "http receiver listening on %s://%s:%s (%s: %s)%s",
            scheme,
            host,
            self.port,
            "raw JSON records" if self.raw else "CloudEvents",
            ", ".join(self.paths),
            " with bearer-token auth" if self._auth.required else " without authentication",
        )

    async def _shutdown(self) -> None:
        # Stop accepting, then let requests already committing finish: their
        # clients are owed an answer for events that are (about to be) queued.
        self._closing = True
        if self._server is not None:
            await self._server.stop_accepting()
        await self._idle.wait()
        if self._server is not None:
            await self._server.stop()

    def health(self) -> dict[str, Any]:
        out = super().health()
        out.update(
            {
                "endpoint": self.config.endpoint,
                "port": self.port,
                "in_flight_requests": self._inflight,
                "connections": self._server.connections if self._server else 0,
                "refused_connections": self._server.refused_connections if self._server else 0,
            }
        )
        return out

    # -- request handling -------------------------------------------------------

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        return await self._refuse_unread(
            request,
            problem_answer(
                404,
                "Not Found",
                f"no endpoint at {shorten(request.path, 100)}; send to {' or '.join(self.paths)}",
            ),
        )

    async def _refuse_unread(self, request: web.Request, answer: Answer, refused: int = 0) -> web.StreamResponse:
        """Answer ``answer`` to a request whose body was not read.

        The body is read and dropped first (for at most ``read_timeout``, 10 s
        at most), as aiohttp would after the answer -- but here a body that
        cannot be decoded (bad gzip) or does not arrive closes the connection
        after the answer instead of an "Unhandled exception" traceback and a
        reset that can destroy the answer before the client reads it.
        """
        try:
            async with asyncio.timeout(min(self.config.read_timeout, 10.0)):
                while await request.content.readany():
                    pass
        except (TimeoutError, web.RequestPayloadError):
            return await self._answer_and_close(request, answer)
        return to_web(self._answer(answer, refused, "invalid" if refused else ""))

    def _answer(self, answer: Answer, refused: int = 0, reason: str = "") -> Answer:
        count = self._requests_by_code.get(answer.status)
        if count is None:
            count = hot_inc(self._requests.labels(receiver=self.id, code=str(answer.status)))
            self._requests_by_code[answer.status] = count
        count(1)
        if refused:
            self._received.labels(receiver=self.id).inc(refused)
            self._refused.labels(receiver=self.id, reason=reason).inc(refused)
        return answer

    def _unauthorized(self) -> Answer:
        return problem_answer(
            401,
            "Unauthorized",
            "a valid bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": 'Bearer realm="collector"'},
        )

    def _body_timeout(self) -> Answer:
        return problem_answer(408, "Request Timeout", f"the body did not arrive within {self.config.read_timeout:g}s")

    def fast_route(self) -> FastRoute:
        """What the listener answers without aiohttp's request objects (collector.fastpath)."""
        return FastRoute(
            paths=frozenset(self.paths),
            max_body_bytes=self.config.max_body_bytes,
            read_timeout=self.config.read_timeout,
            handler=self._fast,
            timeout_answer=lambda: self._answer(self._body_timeout()),
        )

    async def _fast(self, path: str, headers: dict[str, str], body: bytes) -> Answer:
        """A POST to one of our paths, its body whole, within max_body_bytes and not encoded."""
        if not self._auth.allows(headers.get("authorization")):
            return self._answer(self._unauthorized())
        return await self._intake(path, headers, body)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return await self._refuse_unread(
                request,
                problem_answer(
                    405,
                    "Method Not Allowed",
                    f"{shorten(request.method, 20)} is not supported; use POST",
                    headers={"Allow": "POST"},
                ),
            )
        if not self._auth.allows(request.headers.get("Authorization")):
            return await self._refuse_unread(request, self._unauthorized())
        try:
            check_content_encoding(request.headers.get("Content-Encoding"))
        except IntakeError as exc:
            return await self._refuse_unread(request, problem_answer(exc.status, exc.title, exc.detail), 1)
        length = request.content_length
        if length is not None and length > self.config.max_body_bytes:
            return await self._refuse_unread(request, self._too_large(length))
        try:
            if request.content.is_eof():
                # The whole body is already buffered (the usual case for small
                # requests): read() returns without waiting, so no timer at all.
                body = await request.read()
            else:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for wraps
                # the read in a new Task, ~7 us per request.
                async with asyncio.timeout(self.config.read_timeout):
                    body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return to_web(self._answer(self._too_large(None)))
        except TimeoutError:
            return await self._answer_and_close(request, self._body_timeout())
        except web.RequestPayloadError as exc:
            # A broken chunked encoding or Content-Encoding (bad gzip): the
            # client's fault, and the stream cannot be trusted any further.
            reason = " ".join(str(exc).split()).removeprefix("400, message: ")[:200]
            if self._server is not None:
                self._server.protocol_error(request.remote, f"the body could not be read: {reason}")
            return await self._answer_and_close(
                request, problem_answer(400, "Bad Request", f"the request body could not be read: {reason}")
            )
        return to_web(await self._intake(request.path, request.headers, body))

    async def _intake(self, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """Parse, check and commit one request's body (both paths); the answer, counted.

        ``headers``: looked up by lower-case name (aiohttp's are case-insensitive, the fast path's lower-case).
        """
        if self.raw:
            return await self._intake_raw(path, headers, body)
        try:
            events = parse_events(body, headers.get("content-type"))
        except IntakeError as exc:
            return self._answer(problem_answer(exc.status, exc.title, exc.detail), 1, "invalid")
        n = len(events)
        if n > self.config.max_events:
            return self._answer(
                problem_answer(
                    413, "Payload Too Large", f"{n} events in one request; the limit is {self.config.max_events}"
                ),
                n,
                "too_large",
            )
        as_sent = True
        if self.config.fill_missing:
            now = datetime.now(UTC)
            filled = [fill_defaults(e, now=now) for e in events]  # non-dicts come back as they are
            as_sent = all(map(is_, filled, events))
            events = filled
        # The first 100 problems and their count: a 4 MB request of invalid fields once made a 98 MB answer.
        errors, total, checked = collect_errors(
            events, validate_event if self.config.fill_missing else _validate_with_time
        )
        if errors:
            return self._answer(
                problem_answer(
                    400,
                    "Bad Request",
                    _summary(errors, n, total, n - checked),
                    errors,
                    events=events,
                    total=total,
                    unchecked=n - checked,
                ),
                n,
                "invalid",
            )
        if as_sent:  # the queue stores the client's bytes instead of serialising the events again
            events = EncodedEvents(events, json_inside(body))
        return await self._commit(path, events)

    async def _intake_raw(self, path: str, headers: Mapping[str, str], body: bytes) -> Answer:
        """Raw JSON records: the pipeline's processors make CloudEvents of them,
        and the pipeline validates the result (errors name the record index)."""
        try:
            records = parse_records(body, headers.get("content-type"))
        except IntakeError as exc:
            return self._answer(problem_answer(exc.status, exc.title, exc.detail), 1, "invalid")
        if len(records) > self.config.max_events:
            return self._answer(
                problem_answer(
                    413,
                    "Payload Too Large",
                    f"{len(records)} records in one request; the limit is {self.config.max_events}",
                ),
                len(records),
                "too_large",
            )
        meta = self._raw_meta
        if self.config.headers:
            kept = {h: headers[h] for h in self.config.headers if h in headers}
            meta = Meta(receiver=self.id, headers=kept, extra=_RAW_JSON)
        return await self._commit(path, records, meta)

    async def _commit(self, path: str, events: list[Any], meta: Meta | None = None) -> Answer:
        if self._closing:
            return self._answer(
                problem_answer(
                    503,
                    "Service Unavailable",
                    "the collector is shutting down; retry shortly",
                    headers={"Retry-After": "1"},
                )
            )
        self._inflight += 1
        self._idle.clear()
        try:
            await self.emit(events, meta if meta is not None else self._validated)
        except PermanentError as exc:
            return self._answer(
                problem_answer(
                    400, "Bad Request", exc.message or _summary(exc.records, len(events)), exc.records, events=events
                )
            )
        except BackpressureError as exc:
            retry = max(1, round(exc.retry_after or 1))
            return self._answer(
                problem_answer(
                    503,
                    "Service Unavailable",
                    f"{exc.message}; retry after {retry}s",
                    headers={"Retry-After": str(retry)},
                )
            )
        except Exception:
            self.log.exception("receiver %s: committing %d event(s) failed", self.id, len(events))
            return self._answer(
                problem_answer(
                    500, "Internal Server Error", "the events could not be committed; nothing was accepted, retry later"
                )
            )
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
        return self._answer(_ACCEPTED.get(path) or _ACCEPTED[V1_PATH])

    async def _answer_and_close(self, request: web.Request, answer: Answer) -> web.Response:
        """Send ``answer`` and drop the connection at once.

        For a body that will not arrive (408) or cannot be parsed further:
        ``Connection: close`` alone would still let aiohttp linger up to 10 s
        reading the rest of the body, holding a stalled client's connection
        (and a graceful shutdown) that long.
        """
        response = to_web(self._answer(answer))
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()  # flushes what was written, then closes
        return response

    def _too_large(self, length: int | None) -> Answer:
        got = f"{length} bytes" if length is not None else "the body"
        return problem_answer(
            413,
            "Payload Too Large",
            f"{got} exceeds max_body_bytes={self.config.max_body_bytes}; split the batch into smaller requests",
        )


def _validate_with_time(event: Any, index: int) -> list[RecordError]:
    """OpenMeter's rules plus a required ``time`` (fill_missing off)."""
    errors = validate_event(event, index)
    if isinstance(event, dict) and event.get("time") is None:
        errors.append(
            RecordError(
                index,
                "time is required: this receiver does not fill in the arrival time (fill_missing is false); "
                'send an RFC 3339 timestamp such as "2024-05-01T12:00:00Z"',
                "time",
            )
        )
    return errors


def _summary(errors: list[RecordError], n: int, total: int | None = None, unchecked: int = 0) -> str:
    count = max(total or 0, len(errors))
    first = errors[0]
    where = f"event {first.index}" + (f" field {shorten(str(first.field), 64)!r}" if first.field else "")
    more = f" (and {count - 1} more problem(s))" if count > 1 else ""
    listed = f"; the first {len(errors)} are listed" if count > len(errors) else ""
    stopped = f"; the last {unchecked} event(s) were not checked" if unchecked else ""
    return (
        f"{count} problem(s) in {n} event(s); nothing was accepted{listed}{stopped}. "
        f"{where}: {shorten(first.message, 400)}{more}"
    )
