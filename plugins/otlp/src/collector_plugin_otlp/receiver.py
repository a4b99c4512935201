"""The ``otlp`` receiver: OTLP/gRPC and OTLP/HTTP in front of the pipeline.

Both transports decode the request (:mod:`.decode`), then call
:meth:`OtlpReceiver.export`, which turns it into records (:mod:`.records`,
:mod:`.delta` for cumulative metrics) and emits them.  The answer is sent only
after ``emit`` returned, i.e. after every target queue committed.

Partial success.  OTLP lets a server accept part of a request, so the
receiver emits with ``partial=True``: the pipelines commit the records they
accept, once, and return the ones they refused (a mapping that raised, an
event that breaks the exporters' event rules) with their reasons
(docs/plugin-authors.md, "Event rules and partial acceptance").  The answer is
a success with ``partial_success``: how many log records / data points / spans
were rejected and the first reason.  Records that a mapping drops on purpose
(returns None) are not rejections.  The rejected records are not retried by
the client (OTLP says so) and are counted in
``collector_receiver_refused_events_total{reason="invalid"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from collector.api import Acceptance, BearerAuth, Meta, Receiver
from collector_plugin_otlp.closing import Closing
from collector_plugin_otlp.config import OtlpReceiverConfig
from collector_plugin_otlp.decode import SIGNALS, Signal
from collector_plugin_otlp.delta import DeltaState
from collector_plugin_otlp.records import log_records, metric_points, span_records

RECORD_SIGNAL = {"logs": "log", "metrics": "metric", "traces": "span"}
REFUSAL_LOG_INTERVAL = 60.0  # seconds between two warnings about the full delta state


@dataclass(frozen=True)
class Outcome:
    """How an export ended: how many items were rejected, and why (empty when none)."""

    rejected: int = 0
    message: str = ""


class OtlpReceiver(Receiver[OtlpReceiverConfig]):
    def __init__(self, ctx: Any, config: OtlpReceiverConfig) -> None:
        super().__init__(ctx, config)
        self._auth = BearerAuth(config.auth.bearer_tokens(f"receivers.{ctx.id}.auth", ctx.telemetry.redactor))
        m = config.metrics
        self.delta: DeltaState | None = (
            DeltaState(ctx.storage_dir, initial_value=m.initial_value, series_ttl=m.series_ttl, max_series=m.max_series)
            if m.cumulative_to_delta
            else None
        )
        if self.delta is not None:
            delta = self.delta
            ctx.metrics.gauge(
                "otlp_delta_series",
                "Series in the otlp receiver's cumulative-to-delta state (at most metrics.max_series).",
                ["receiver"],
            ).labels(receiver=ctx.id).set_function(lambda: delta.series)
        self._refused_series = ctx.metrics.counter(
            "otlp_delta_refused_series",
            "Data points of new cumulative series refused because the delta state held metrics.max_series series "
            "(not emitted; reported to the client as rejected).",
            ["receiver"],
        ).labels(receiver=ctx.id)
        self._refusals_since_log = 0
        self._next_refusal_log = float("-inf")
        self.grpc: Any = None
        self.http: Any = None
        if config.grpc is not None:
            from collector_plugin_otlp.grpc_server import GrpcServer

            self.grpc = GrpcServer(self, config.grpc)
        if config.http is not None:
            from collector_plugin_otlp.http_server import HttpServer

            self.http = HttpServer(self, config.http)
        self._tasks: set[asyncio.Task[Outcome]] = set()
        self._closing = False
        self._busy: set[str] = set()
        self._series_free: asyncio.Condition | None = None
        self._requests = ctx.telemetry.metrics.requests

    # -- lifecycle ---------------------------------------------------------------------------

    async def _start(self) -> None:
        self._closing = False
        self._series_free = asyncio.Condition()
        if self.delta is not None:
            await asyncio.to_thread(self.delta.open, self.ctx.clock.time())
        try:
            if self.grpc is not None:
                await self.grpc.start()
            if self.http is not None:
                await self.http.start()
        except BaseException:
            await self._stop_servers()
            if self.delta is not None:
                await asyncio.to_thread(self.delta.close, clean=True)
            raise
        listening = []
        if self.grpc is not None:
            listening.append(f"gRPC on {self.grpc.host}:{self.grpc.port}{' (TLS)' if self.grpc.tls else ''}")
        if self.http is not None:
            listening.append(f"HTTP on {self.http.host}:{self.http.port}{' (TLS)' if self.http.tls else ''}")
        self.log.info(
            "otlp receiver listening: %s%s",
            ", ".join(listening),
            " with bearer-token auth" if self._auth.required else " without authentication",
        )

    async def _shutdown(self) -> None:
        # Stop taking requests, let the exports already committing finish
        # (their clients are owed an answer), then close the state cleanly.
        self._closing = True
        await self._stop_servers()
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.http is not None:
            await self.http.cleanup()
        if self.delta is not None:
            await asyncio.to_thread(self.delta.close, clean=True)

    async def _stop_servers(self) -> None:
        if self.http is not None:
            await self.http.stop()
        if self.grpc is not None:
            await self.grpc.stop()

    def health(self) -> dict[str, Any]:
        out = super().health()
        if self.grpc is not None:
            out["grpc"] = {"endpoint": self.grpc.config.endpoint, "port": self.grpc.port}
        if self.http is not None:
            out["http"] = self.http.health()  # endpoint, port, connections, refused_connections
        out["in_flight_exports"] = len(self._tasks)
        if self.delta is not None:
            out["delta_series"] = {"series": self.delta.series, "max_series": self.delta.max_series}
        return out

    # -- shared by the transports ------------------------------------------------------------

    @property
    def auth_required(self) -> bool:
        return self._auth.required

    def authorized(self, header: str | bytes | None) -> bool:
        """Whether an ``Authorization`` value carries one of the tokens (constant time per token)."""
        return self._auth.allows(header)

    def count(self, code: str) -> None:
        self._requests.labels(receiver=self.id, code=code).inc()

    async def export(self, signal: Signal, message: Any, transport: str) -> Outcome:
        """Turn an Export request into records and commit them; returns once committed.

        Raises :class:`Closing`, :class:`~collector.errors.BackpressureError`,
        or whatever else failed (nothing, or not everything, was committed:
        the client must retry).  The work runs in its own task, shielded from
        the caller's cancellation (a gRPC deadline, a client that hung up), so
        that a commit that started always settles the delta state.
        """
        if self._closing:
            raise Closing("the collector is shutting down; retry shortly")
        task = asyncio.ensure_future(self._export(signal, message, transport))
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Task[Outcome]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here: the caller may have gone away

    async def _export(self, signal: Signal, message: Any, transport: str) -> Outcome:
        meta = Meta(receiver=self.id, extra={"signal": RECORD_SIGNAL[signal], "transport": transport})
        if signal == "metrics":
            return await self._export_metrics(message, meta)
        records = log_records(message) if signal == "logs" else span_records(message)
        if not records:
            return Outcome()
        result = await self.emit(records, meta, partial=True)
        return _outcome(signal, result, None, len(records))

    async def _export_metrics(self, message: Any, meta: Meta) -> Outcome:
        points, total = metric_points(message)
        delta = self.delta
        keys = {p.series for p in points if p.cumulative} if delta is not None else set()
        if delta is None or not keys:
            records = [p.record for p in points]
            origins: list[int | None] = [p.index for p in points]
            if not records:
                return Outcome()
            result = await self.emit(records, meta, partial=True)
            return _outcome("metrics", result, origins, total)
        async with self._hold(keys):
            now = self.ctx.clock.time()
            stored = await asyncio.to_thread(delta.read, keys, now)
            plan = delta.plan(points, stored)
            await asyncio.to_thread(delta.write, plan, now)
            try:
                result = await self.emit(plan.records, meta, partial=True) if plan.records else Acceptance(0)
            except BaseException:
                # Not known to be committed, nor known not to be (with several
                # exporters, one queue may have committed): replay later.
                delta.mark_in_doubt(plan)
                raise
            try:
                await asyncio.to_thread(delta.settle, plan, set(result.rejected_indexes), now)
            except Exception:
                self.log.exception("otlp receiver %s: could not restore the state of refused series", self.id)
        outcome = _outcome("metrics", result, plan.origins, total)
        if plan.refused:
            outcome = self._refuse_series(plan.refused, plan.refused_series, outcome, total)
        return outcome

    def _refuse_series(self, points: list[int], series: int, outcome: Outcome, total: int) -> Outcome:
        """Points of new series the full delta state refused: counted, logged (at most once a minute),
        and added to the answer's rejected data points."""
        assert self.delta is not None
        self._refused_series.inc(len(points))
        self._refusals_since_log += len(points)
        now = self.ctx.clock.monotonic()
        if now >= self._next_refusal_log:
            self.log.warning(
                "otlp receiver %s: the cumulative-to-delta state holds metrics.max_series=%d series; refused %d "
                "data points of new series since the last such message (%d series in the last request). They "
                "are not emitted (usage of a series refused is counted when it is admitted later); raise "
                "metrics.max_series or lower metrics.series_ttl (collector_otlp_delta_refused_series_total)",
                self.id,
                self.delta.max_series,
                self._refusals_since_log,
                series,
            )
            self._refusals_since_log = 0
            self._next_refusal_log = now + REFUSAL_LOG_INTERVAL
        count = outcome.rejected + len(points)
        reason = (
            f"{len(points)} data points of new series refused: the receiver's cumulative-to-delta state is full "
            f"(metrics.max_series={self.delta.max_series})"
        )
        if outcome.message:
            return Outcome(count, f"{outcome.message}; {reason}")
        rest = "(the rest were accepted)" if count < total else "(none was accepted)"
        return Outcome(count, f"{count} of {total} data points rejected {rest}; {reason}")

    @asynccontextmanager
    async def _hold(self, keys: set[str]) -> AsyncIterator[None]:
        """Serialise exports per series: wait until none of ``keys`` is held, then hold them all."""
        assert self._series_free is not None
        cond = self._series_free
        async with cond:
            await cond.wait_for(lambda: self._busy.isdisjoint(keys))
            self._busy |= keys
        try:
            yield
        finally:
            async with cond:
                self._busy -= keys
                cond.notify_all()


def _outcome(signal: Signal, result: Acceptance, origins: list[int | None] | None, total: int) -> Outcome:
    """The answer's ``partial_success``: items of the request refused (``origins`` maps
    emitted records to them; None when they are the same), and the first reason."""
    if not result.rejected:
        return Outcome()
    item = SIGNALS[signal].item
    rejected = result.rejected_indexes
    # replayed records (origin None) are not items of this request
    count = len(rejected) if origins is None else len({origins[i] for i in rejected if origins[i] is not None})
    if not count:
        return Outcome()
    first = next(e for e in result.rejected if origins is None or origins[e.index] is not None)
    index: int | None = first.index if origins is None else origins[first.index]
    reason = f"{f' field {first.field!r}' if first.field else ''}: {first.message}"
    where = f"{item} {index}" if index is not None else "first"
    rest = "(the rest were accepted)" if count < total else "(none was accepted)"
    message = f"{count} of {total} {item}s rejected by the collector's pipeline {rest}; {where}{reason}"
    return Outcome(count, message)
