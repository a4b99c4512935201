"""OTLP/gRPC: the ``Export`` methods of the logs, metrics and trace services.

The handlers take the raw request bytes (no deserializer), so that a
malformed message is answered INVALID_ARGUMENT with a readable reason instead
of the generic error grpc gives when its deserializer fails.  gzip-compressed
messages are decompressed by grpc itself.

=======================  ======================================================
OK                       committed; ``partial_success`` when records were rejected
INVALID_ARGUMENT         not a valid protobuf Export request
UNAUTHENTICATED          missing or wrong bearer token (``authorization`` metadata)
RESOURCE_EXHAUSTED       the queue refuses data (with RetryInfo), or the message
                         is over ``max_message_bytes`` (grpc's own answer)
UNAVAILABLE              the collector is stopping, or the commit failed (RetryInfo)
=======================  ======================================================

Error details travel as a ``google.rpc.Status`` in ``grpc-status-details-bin``
(with ``google.rpc.RetryInfo`` when the client should retry), and RetryInfo
also in ``google.rpc.retryinfo-bin``, where the OpenTelemetry SDKs read it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc
from grpc import aio

from collector.api import BackpressureError, ConfigError, gil_switch_at_least, parse_endpoint
from collector_plugin_otlp.closing import Closing
from collector_plugin_otlp.config import GrpcConfig
from collector_plugin_otlp.decode import SIGNALS, DecodeError, Signal, parse_protobuf, response, retry_info, status

SHUTDOWN_GRACE = 5.0


class GrpcServer:
    def __init__(self, receiver: Any, config: GrpcConfig) -> None:
        self.receiver = receiver
        self.config = config
        self.host, self._port = parse_endpoint(config.endpoint)
        self.port: int | None = None
        self.tls = config.tls is not None
        self._server: aio.Server | None = None

    async def start(self) -> None:
        max_bytes = self.receiver.config.max_message_bytes
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", max_bytes),
            # Without this, a second process could bind the same port silently; worker
            # processes (service.workers > 1) share it on purpose.
            ("grpc.so_reuseport", 1 if self.receiver.ctx.shared_listeners else 0),
        ]
        if self.config.max_connection_age is not None:
            # A client keeps one connection, which the kernel gave to one worker (or a Service to one
            # replica); GOAWAY after this age makes it reconnect, so its load spreads over time.
            options += [
                ("grpc.max_connection_age_ms", max(1, round(self.config.max_connection_age * 1000))),
                ("grpc.max_connection_age_grace_ms", max(1, round(self.config.max_connection_age_grace * 1000))),
            ]
        server = aio.server(options=options)
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    kind.service, {"Export": grpc.unary_unary_rpc_method_handler(self._handler(signal))}
                )
                for signal, kind in SIGNALS.items()
            ]
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        address = f"{host}:{self._port}"
        where = f"receivers.{self.receiver.id}.grpc"
        try:
            if self.config.tls is not None:
                try:
                    key = self.config.tls.key_file.read_bytes()
                    cert = self.config.tls.cert_file.read_bytes()
                except OSError as exc:
                    raise ConfigError(f"cannot read TLS certificate/key: {exc}", f"{where}.tls") from None
                bound = server.add_secure_port(address, grpc.ssl_server_credentials([(key, cert)]))
            else:
                bound = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(
                f"receiver {self.receiver.id} cannot listen for OTLP/gRPC on {self.config.endpoint}: {exc}"
            ) from None
        if not bound:
            raise OSError(f"receiver {self.receiver.id} cannot listen for OTLP/gRPC on {self.config.endpoint}")
        try:
            await server.start()
        except Exception as exc:
            raise OSError(f"receiver {self.receiver.id}: the OTLP/gRPC server did not start: {exc}") from None
        self._server = server
        self.port = bound
        # gRPC's own threads hand work to the event loop under the GIL: at the core's 0.5 ms switch
        # interval OTLP/gRPC intake fell from ~61k to ~51k records/s (tests/bench/bench_otlp.py).
        gil_switch_at_least(1.0)

    async def stop(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(SHUTDOWN_GRACE)

    def _handler(self, signal: Signal) -> Callable[[bytes, aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        async def export(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
            return await self._handle(signal, request, context)

        return export

    async def _handle(self, signal: Signal, request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        r = self.receiver
        if r.auth_required:
            header = next((v for k, v in (context.invocation_metadata() or ()) if k == "authorization"), None)
            if not r.authorized(header):
                await self._abort(
                    context,
                    grpc.StatusCode.UNAUTHENTICATED,
                    "a valid bearer token is required (metadata authorization: Bearer <token>)",
                )
        try:
            message = parse_protobuf(signal, request)
        except DecodeError as exc:
            problem = str(exc)
        else:
            problem = ""
        if problem:
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem)
        code, reason, retry = grpc.StatusCode.OK, "", None
        try:
            outcome = await r.export(signal, message, "grpc")
        except Closing as exc:
            code, reason, retry = grpc.StatusCode.UNAVAILABLE, str(exc), 1.0
        except BackpressureError as exc:
            retry = max(1.0, exc.retry_after or 1.0)
            code, reason = grpc.StatusCode.RESOURCE_EXHAUSTED, f"{exc.message}; nothing was accepted, retry later"
        except Exception:
            r.log.exception("receiver %s: committing an OTLP/gRPC %s export failed", r.id, signal)
            code, reason, retry = (
                grpc.StatusCode.UNAVAILABLE,
                "the records could not be committed; nothing was accepted, retry later",
                1.0,
            )
        if code is not grpc.StatusCode.OK:
            await self._abort(context, code, reason, retry)
        r.count("OK")
        return bytes(response(signal, outcome.rejected, outcome.message).SerializeToString())

    async def _abort(
        self,
        context: aio.ServicerContext[Any, Any],
        code: grpc.StatusCode,
        message: str,
        retry_after: float | None = None,
    ) -> NoReturn:
        self.receiver.count(code.name)
        details = status(code.value[0], message, retry_after).SerializeToString()
        metadata: list[tuple[str, bytes]] = [("grpc-status-details-bin", details)]
        if retry_after is not None:
            metadata.append(("google.rpc.retryinfo-bin", retry_info(retry_after).SerializeToString()))
        await context.abort(code, message, trailing_metadata=tuple(metadata))
        raise AssertionError("context.abort returned")  # pragma: no cover - abort always raises
