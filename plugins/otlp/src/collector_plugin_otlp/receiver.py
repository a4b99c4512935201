"""The ``otlp`` receiver: OTLP/gRPC and OTLP/HTTP in front of the pipeline.

Both transports decode the request (:mod:`.decode`), then call
:meth:`OtlpReceiver.export`, which turns it into records (:mod:`.records`,
:mod:`.delta` for cumulative metrics) and emits them.  The answer is sent only
after ``emit`` returned, i.e. after every target queue committed.

Partial success.  The pipeline refuses a batch as a whole, naming the records
that failed (a mapping that raised, an event that breaks OpenMeter's rules).
OTLP, on the other hand, lets a server accept part of a request.  So when
``emit`` raises :class:`~collector.errors.PermanentError` naming records, the
receiver emits the batch again without them (at most ``MAX_PASSES`` times,
for records that only a later step refuses), and answers success with
``partial_success``: how many log records / data points / spans were rejected
and the first reason.  Records that a mapping drops on purpose (returns None)
are not rejections.  Only the accepted records are committed; the rejected
ones are not retried by the client (OTLP says so) and are counted in
``collector_receiver_refused_events_total{reason="invalid"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from collector.builtin.http.config import BearerAuth
from collector.components import Receiver
from collector.errors import PermanentError
from collector_plugin_otlp.config import OtlpReceiverConfig
from collector_plugin_otlp.decode import SIGNALS, Signal
from collector_plugin_otlp.delta import DeltaState
from collector_plugin_otlp.records import log_records, metric_points, span_records

MAX_PASSES = 4
RECORD_SIGNAL = {"logs": "log", "metrics": "metric", "traces": "span"}


class Closing(Exception):
    """The receiver is shutting down: the client should retry (elsewhere or later)."""


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
            DeltaState(ctx.storage_dir, initial_value=m.initial_value, series_ttl=m.series_ttl)
            if m.cumulative_to_delta
            else None
        )
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
            out["http"] = {"endpoint": self.http.config.endpoint, "port": self.http.port}
        out["in_flight_exports"] = len(self._tasks)
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
        meta = {"signal": RECORD_SIGNAL[signal], "transport": transport}
        if signal == "metrics":
            return await self._export_metrics(message, meta)
        records = log_records(message) if signal == "logs" else span_records(message)
        if not records:
            return Outcome()
        rejected, first = await self._commit(records, meta)
        return _outcome(signal, rejected, None, len(records), first)

    async def _export_metrics(self, message: Any, meta: dict[str, Any]) -> Outcome:
        points, total = metric_points(message)
        delta = self.delta
        keys = {p.series for p in points if p.cumulative} if delta is not None else set()
        if delta is None or not keys:
            records = [p.record for p in points]
            origins: list[int | None] = [p.index for p in points]
            if not records:
                return Outcome()
            rejected, first = await self._commit(records, meta)
            return _outcome("metrics", rejected, origins, total, first)
        async with self._hold(keys):
            now = self.ctx.clock.time()
            stored = await asyncio.to_thread(delta.read, keys, now)
            plan = delta.plan(points, stored)
            await asyncio.to_thread(delta.write, plan, now)
            try:
                rejected, first = await self._commit(plan.records, meta) if plan.records else (set(), None)
            except BaseException:
                # Not known to be committed, nor known not to be (with several
                # exporters, one queue may have committed): replay later.
                delta.mark_in_doubt(plan)
                raise
            try:
                await asyncio.to_thread(delta.settle, plan, rejected, now)
            except Exception:
                self.log.exception("otlp receiver %s: could not restore the state of refused series", self.id)
        return _outcome("metrics", rejected, plan.origins, total, first)

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

    async def _commit(
        self, records: list[dict[str, Any]], meta: dict[str, Any]
    ) -> tuple[set[int], tuple[int | None, str] | None]:
        """Emit ``records``, leaving out the ones the pipeline refuses.

        Returns the indexes of the refused records and the first reason
        (record index, message); raises what is not a refusal of records.
        """
        remaining = list(range(len(records)))
        rejected: set[int] = set()
        first: tuple[int | None, str] | None = None
        for _ in range(MAX_PASSES):
            batch = [records[i] for i in remaining] if rejected else records
            try:
                await self.emit(batch, meta)
                return rejected, first
            except PermanentError as exc:
                bad = {remaining[e.index] for e in exc.records if 0 <= e.index < len(remaining)}
                if first is None:
                    first = _first_reason(exc, remaining)
                if not bad:  # the refusal names no record: nothing of this batch can go
                    bad = set(remaining)
                rejected |= bad
                remaining = [i for i in remaining if i not in bad]
                if not remaining:
                    return rejected, first
        rejected.update(remaining)
        return rejected, first


def _first_reason(exc: PermanentError, remaining: list[int]) -> tuple[int | None, str]:
    """The first refused record (an index into the emitted records) and why."""
    for e in exc.records:
        if 0 <= e.index < len(remaining):
            where = f" field {e.field!r}" if e.field else ""
            return remaining[e.index], f"{where}: {e.message}"
    return None, f": {exc.message}"


def _outcome(
    signal: Signal,
    rejected: set[int],
    origins: list[int | None] | None,
    total: int,
    first: tuple[int | None, str] | None,
) -> Outcome:
    if not rejected:
        return Outcome()
    item = SIGNALS[signal].item
    # replayed records (origin None) are not items of this request
    count = len(rejected) if origins is None else len({origins[i] for i in rejected if origins[i] is not None})
    if not count:
        return Outcome()
    index, reason = first if first is not None else (None, ": refused by the pipeline")
    if index is not None and origins is not None:
        index = origins[index]
    where = f"{item} {index}" if index is not None else "first"
    rest = "(the rest were accepted)" if count < total else "(none was accepted)"
    message = f"{count} of {total} {item}s rejected by the collector's pipeline {rest}; {where}{reason}"
    return Outcome(count, message)
