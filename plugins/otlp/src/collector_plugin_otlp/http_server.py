"""OTLP/HTTP: ``POST /v1/logs``, ``/v1/metrics``, ``/v1/traces`` (protobuf or JSON, optionally gzip).

Answers, per the OTLP specification (errors carry a ``google.rpc.Status``
in the request's encoding, JSON when that encoding is unsupported):

=====  ============================================================
200    committed; ``partial_success`` when some records were rejected
400    not a valid OTLP request (bad protobuf, bad JSON, bad gzip), or not
       valid HTTP/1.1
401    missing or wrong bearer token (when tokens are configured)
404    unknown path
405    method other than POST
408    the headers did not arrive within ``header_timeout`` or the body
       within ``read_timeout`` (then the connection is closed)
413    body over ``max_message_bytes`` (on the wire or decompressed)
415    content type other than application/x-protobuf or application/json,
       or a Content-Encoding other than gzip, deflate or identity
503    the queue refuses data, the collector is stopping, or more than
       ``max_connections`` are open; Retry-After
=====  ============================================================

The listener is the core's guarded one (``collector.api.start_http_server``):
a kept-alive connection without a request is closed after ``idle_timeout``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from collector.api import BackpressureError, HttpServerHandle, parse_endpoint, start_http_server
from collector_plugin_otlp.closing import Closing
from collector_plugin_otlp.config import HttpConfig
from collector_plugin_otlp.decode import CODES, SIGNALS, DecodeError, Encoding, Signal, encode, parse, response, status

PROTOBUF_TYPES = ("application/x-protobuf", "application/protobuf")
JSON_TYPE = "application/json"
_CONTENT_TYPE: dict[Encoding, str] = {"protobuf": "application/x-protobuf", "json": JSON_TYPE}
_ENCODINGS = ("", "identity", "gzip", "deflate")
_HTTP_TO_CODE = {
    400: CODES.INVALID_ARGUMENT,
    401: CODES.UNAUTHENTICATED,
    404: CODES.NOT_FOUND,
    405: CODES.UNIMPLEMENTED,
    408: CODES.DEADLINE_EXCEEDED,
    413: CODES.RESOURCE_EXHAUSTED,
    415: CODES.INVALID_ARGUMENT,
    503: CODES.UNAVAILABLE,
}


def encoding_of(content_type: str | None) -> Encoding | None:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media in PROTOBUF_TYPES:
        return "protobuf"
    if media == JSON_TYPE:
        return "json"
    return None


def error_response(
    http_status: int,
    message: str,
    encoding: Encoding | None,
    *,
    retry_after: float | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    enc: Encoding = encoding or "json"
    body = status(_HTTP_TO_CODE.get(http_status, CODES.UNKNOWN), message, retry_after)
    payload = body.SerializeToString() if enc == "protobuf" else json_format.MessageToJson(body, indent=None).encode()
    all_headers = dict(headers or {})
    if retry_after is not None:
        all_headers["Retry-After"] = str(max(1, round(retry_after)))
    return web.Response(status=http_status, body=payload, content_type=_CONTENT_TYPE[enc], headers=all_headers)


def listener_error(http_status: int, title: str, detail: str) -> tuple[str, bytes]:
    """The errors the listener answers itself (408, 503, malformed HTTP) as a JSON ``google.rpc.Status``."""
    retry_after = 1.0 if http_status == 503 else None
    body = status(_HTTP_TO_CODE.get(http_status, CODES.UNKNOWN), detail, retry_after)
    return JSON_TYPE, json_format.MessageToJson(body, indent=None).encode()


class HttpServer:
    def __init__(self, receiver: Any, config: HttpConfig) -> None:
        self.receiver = receiver
        self.config = config
        self.max_bytes = receiver.config.max_message_bytes
        self.host, self._port = parse_endpoint(config.endpoint)
        self.port: int | None = None
        self.tls = config.tls is not None
        self._server: HttpServerHandle | None = None

    def app(self) -> web.Application:
        # aiohttp enforces client_max_size on the decompressed body while
        # reading, so a gzip bomb never sits in memory; +1 tells "exactly the
        # limit" from "over".
        app = web.Application(client_max_size=self.max_bytes + 1)
        for signal, kind in SIGNALS.items():
            app.router.add_route("*", kind.path, self._handler(signal))
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    def _handler(self, signal: Signal) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(request, signal)

        return handle

    async def start(self) -> None:
        tls = self.config.tls
        ssl_ctx = tls.server_context(f"receivers.{self.receiver.id}.http.tls") if tls is not None else None
        r = self.receiver
        try:
            self._server = await start_http_server(
                self.app(),
                self.host,
                self._port,
                name=r.id,
                limits=self.config.limits(),
                clock=r.ctx.clock,
                log=r.log,
                ssl=ssl_ctx,
                error_body=listener_error,
                reuse_port=r.ctx.shared_listeners,
            )
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"receiver {r.id} cannot listen for OTLP/HTTP on {self.config.endpoint}: {exc.strerror}",
            ) from None
        self.port = self._server.port

    async def stop(self) -> None:
        """Stop accepting connections (requests in progress go on)."""
        if self._server is not None:
            await self._server.stop_accepting()

    async def cleanup(self) -> None:
        """Close every connection."""
        if self._server is not None:
            await self._server.stop()
            self._server = None

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"endpoint": self.config.endpoint, "port": self.port}
        out["connections"] = self._server.connections if self._server is not None else 0
        out["refused_connections"] = self._server.refused_connections if self._server is not None else 0
        return out

    # -- requests ------------------------------------------------------------------------------

    def _answer(self, response: web.Response) -> web.Response:
        self.receiver.count(str(response.status))
        return response

    async def _not_found(self, request: web.Request) -> web.Response:
        paths = ", ".join(k.path for k in SIGNALS.values())
        return self._answer(
            error_response(
                404, f"no OTLP endpoint at {request.path}; POST to {paths}", encoding_of(request.content_type)
            )
        )

    async def _handle(self, request: web.Request, signal: Signal) -> web.StreamResponse:
        encoding = encoding_of(request.headers.get("Content-Type"))
        if request.method != "POST":
            return self._answer(
                error_response(405, f"{request.method} is not supported; use POST", encoding, headers={"Allow": "POST"})
            )
        r = self.receiver
        if r.auth_required and not r.authorized(request.headers.get("Authorization")):
            return self._answer(
                error_response(
                    401,
                    "a valid bearer token is required (Authorization: Bearer <token>)",
                    encoding,
                    headers={"WWW-Authenticate": 'Bearer realm="collector"'},
                )
            )
        if encoding is None:
            given = request.headers.get("Content-Type") or "none"
            return self._answer(
                error_response(
                    415,
                    f"unsupported Content-Type {given!r}: send application/x-protobuf (OTLP protobuf) or "
                    "application/json (OTLP/JSON)",
                    None,
                )
            )
        content_encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if content_encoding not in _ENCODINGS:
            return self._answer(
                error_response(
                    415, f"unsupported Content-Encoding {content_encoding!r}: send gzip or no compression", encoding
                )
            )
        length = request.content_length
        if length is not None and length > self.max_bytes:
            return self._answer(self._too_large(f"{length} bytes", encoding))
        try:
            body = await asyncio.wait_for(request.read(), self.config.read_timeout)
        except web.HTTPRequestEntityTooLarge:
            return self._answer(self._too_large("the decompressed body", encoding))
        except TimeoutError:
            return await self._answer_and_close(
                request,
                error_response(408, f"the body did not arrive within {self.config.read_timeout:g}s", encoding),
            )
        except web.RequestPayloadError as exc:
            # A broken chunked encoding or bad gzip: the stream cannot be trusted any further.
            reason = " ".join(str(exc).split()).removeprefix("400, message: ")[:200]
            if self._server is not None:
                self._server.protocol_error(request.remote, f"the body could not be read: {reason}")
            return await self._answer_and_close(
                request, error_response(400, f"the request body could not be read: {reason}", encoding)
            )
        try:
            message = parse(signal, body, encoding)
        except DecodeError as exc:
            return self._answer(error_response(400, str(exc), encoding))
        try:
            outcome = await r.export(signal, message, "http")
        except Closing as exc:
            return self._answer(error_response(503, str(exc), encoding, retry_after=1.0))
        except BackpressureError as exc:
            retry = max(1.0, exc.retry_after or 1.0)
            return self._answer(
                error_response(
                    503, f"{exc.message}; nothing was accepted, retry after {retry:g}s", encoding, retry_after=retry
                )
            )
        except Exception:
            r.log.exception("receiver %s: committing an OTLP/HTTP %s export failed", r.id, signal)
            return self._answer(
                error_response(
                    503,
                    "the records could not be committed; nothing was accepted, retry later",
                    encoding,
                    retry_after=1.0,
                )
            )
        payload = encode(response(signal, outcome.rejected, outcome.message), encoding)
        return self._answer(web.Response(status=200, body=payload, content_type=_CONTENT_TYPE[encoding]))

    def _too_large(self, what: str, encoding: Encoding | None) -> web.Response:
        return error_response(
            413,
            f"{what} exceeds max_message_bytes={self.max_bytes}; export smaller batches",
            encoding,
        )

    async def _answer_and_close(self, request: web.Request, response: web.Response) -> web.Response:
        """Send ``response`` and drop the connection at once (the rest of the body will not be read)."""
        self._answer(response)
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()
        return response
