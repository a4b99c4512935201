"""The ``prometheus`` receiver: PromQL per time window, as CloudEvents.

Built on :class:`collector.pull.PullReceiver`: the framework picks the
windows, retries a failed one, and saves the watermark only once a window's
events are committed.  This module only turns one window into records:

* every query is evaluated for the window (instant: at the window end; range:
  every ``step`` from start + step to end), concurrently;
* a window is returned only when **every** query succeeded -- one failure
  fails the window, so the watermark never passes usage that was not read;
* each series (and each sample of a range query) becomes a record, which the
  default mapping or the user's ``mapping`` turns into a CloudEvent with a
  deterministic id (source, query name, series labels, window start).
"""

from __future__ import annotations

import asyncio
import math
import ssl
from datetime import UTC, datetime
from typing import Any

import aiohttp

from collector.api import (
    AuthError,
    CompiledMapping,
    Meta,
    PullReceiver,
    RetryableError,
    Window,
    compile_expression,
    format_duration,
    format_time,
)
from collector_plugin_prometheus.config import PrometheusReceiverConfig, QueryConfig, divides, prometheus_duration
from collector_plugin_prometheus.results import PrometheusAPIError, QueryResult, parse_response

# Connections per receiver, which also bounds how many queries of a window run at once.
MAX_CONNECTIONS = 4


class PrometheusQueryError(RetryableError):
    """A query of a window failed; the framework retries the window."""


class PrometheusAuthError(AuthError):
    """Prometheus (or its proxy) refused our credentials: 401/403."""


def _rfc3339(ts: float) -> str:
    return format_time(datetime.fromtimestamp(ts, UTC))


class PrometheusReceiver(PullReceiver[PrometheusReceiverConfig]):
    def __init__(self, ctx: Any, config: PrometheusReceiverConfig) -> None:
        super().__init__(ctx, config)
        self.source = config.source
        self.timeout = config.timeout_seconds()
        self.mapping: CompiledMapping | None = None
        if config.mapping is not None:
            self.mapping = compile_expression(config.mapping, ctx.functions, path=f"receivers.{ctx.id}.mapping")
        ctx.telemetry.redactor.add(*config.secrets())
        self._dropped = ctx.metrics.counter(
            "prometheus_dropped_series",
            "Series (or range samples) not turned into events: missing_subject, not_finite, mapped_to_none.",
            ["receiver", "query", "reason"],
        )
        self._session: aiohttp.ClientSession | None = None

    # -- lifecycle -----------------------------------------------------------------

    async def _start(self) -> None:
        ssl_option = await asyncio.to_thread(self._ssl)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, ssl=ssl_option),
            headers={"Accept": "application/json", "User-Agent": "collector-plugin-prometheus"},
        )
        await super()._start()

    async def _shutdown(self) -> None:
        try:
            await super()._shutdown()
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    def _ssl(self) -> ssl.SSLContext | bool:
        return self.config.ssl_context(f"receivers.{self.id}")

    def health(self) -> dict[str, Any]:
        out = super().health()
        out["url"] = self.config.url
        out["queries"] = [q.name for q in self.config.queries]
        return out

    # -- requests ------------------------------------------------------------------

    async def _headers(self) -> dict[str, str]:
        cfg = self.config
        try:
            headers = await asyncio.to_thread(cfg.auth_headers)  # reads token_file: a rotated token is picked up
        except OSError as exc:
            raise PrometheusAuthError(
                f"receiver {self.id}: cannot read token_file {str(cfg.token_file)!r}: {exc.strerror}"
            ) from None
        if cfg.token_file is not None and "Authorization" in headers:
            self.ctx.telemetry.redactor.add(headers["Authorization"].removeprefix("Bearer "))  # masked too
        if cfg.tenant:
            headers["X-Scope-OrgID"] = cfg.tenant
        return headers

    def _request(self, query: QueryConfig, window: Window) -> tuple[str, dict[str, str]]:
        params = {"query": query.render(window.seconds), "timeout": prometheus_duration(self.timeout)}
        step = query.step_seconds()
        if step is None:
            params["time"] = _unix(window.end)
            return self.config.url + "/api/v1/query", params
        params.update(start=_unix(window.start + step), end=_unix(window.end), step=_unix(step))
        return self.config.url + "/api/v1/query_range", params

    async def query(self, query: QueryConfig, window: Window, headers: dict[str, str]) -> QueryResult:
        """Evaluate one query for ``window``; errors name the receiver and the query."""
        where = f"receiver {self.id}: query {query.name!r}"
        step = query.step_seconds()
        if step is not None and not divides(step, window.seconds):
            raise PrometheusQueryError(
                f"{where}: step {format_duration(query.step or 0)} does not divide the window {window} "
                f"({window.seconds:g}s)"
            )
        if self._session is None:
            raise PrometheusQueryError(f"{where}: the receiver is not started")
        url, params = self._request(query, window)
        try:
            async with self._session.post(
                url, data=params, headers=headers, timeout=aiohttp.ClientTimeout(total=self.timeout)
            ) as resp:
                status, body = resp.status, await resp.read()
        except TimeoutError:
            raise PrometheusQueryError(
                f"{where}: no answer from {url} within {format_duration(self.timeout)}"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            reason = exc.os_error.strerror if exc.os_error is not None and exc.os_error.strerror else str(exc)
            raise PrometheusQueryError(f"{where}: cannot connect to {self.config.url}: {reason}") from None
        except aiohttp.ClientError as exc:
            raise PrometheusQueryError(f"{where}: request to {url} failed: {type(exc).__name__}: {exc}") from None
        try:
            result = parse_response(status, body)
        except PrometheusAPIError as exc:
            if exc.is_auth:
                raise PrometheusAuthError(f"{where}: {exc}", status=exc.status) from None
            raise PrometheusQueryError(f"{where}: {exc}") from None
        if query.type == "range" and result.result_type != "matrix":
            raise PrometheusQueryError(f"{where}: a range query answered a {result.result_type}, not a matrix")
        if len(result.series) > self.config.max_series:
            raise PrometheusQueryError(
                f"{where}: {len(result.series)} series for window {window}, more than max_series="
                f"{self.config.max_series}; aggregate the query (sum by (...)) or raise max_series"
            )
        for warning in result.warnings:
            self.log.warning("%s: Prometheus warns for window %s: %s", where, window, warning)
        return result

    # -- the window ------------------------------------------------------------------

    async def collect(self, window: Window) -> list[Any]:
        queries = self.config.queries
        headers = await self._headers()
        results = await asyncio.gather(*(self.query(q, window, headers) for q in queries), return_exceptions=True)
        failed = [(q, r) for q, r in zip(queries, results, strict=True) if isinstance(r, BaseException)]
        for _q, r in failed:
            if not isinstance(r, Exception):  # cancellation and the like go up unchanged
                raise r
        if failed:
            # Every failing query is named; the window is retried as a whole.
            message = "; ".join(str(r) for _, r in failed)
            if any(isinstance(r, AuthError) for _, r in failed):
                raise PrometheusAuthError(message) from failed[0][1]
            raise PrometheusQueryError(message) from failed[0][1]
        events: list[Any] = []
        meta = Meta(receiver=self.id, window=window)
        for query, result in zip(queries, results, strict=True):
            assert isinstance(result, QueryResult)
            events.extend(self._events(query, result, window, meta))
        return events

    def _events(self, query: QueryConfig, result: QueryResult, window: Window, meta: Meta) -> list[Any]:
        step = query.step_seconds()
        subject_label = query.subject_label or self.config.subject_label
        out: list[Any] = []
        dropped: dict[str, int] = {}
        example: dict[str, dict[str, str]] = {}

        def drop(reason: str, labels: dict[str, str]) -> None:
            dropped[reason] = dropped.get(reason, 0) + 1
            example.setdefault(reason, labels)

        for series in result.series:
            key = sorted(series.labels.items())
            for ts, value in series.samples:
                if isinstance(value, float) and not math.isfinite(value):
                    drop("not_finite", series.labels)
                    continue
                stamp = _rfc3339(ts)
                record = {
                    "query": query.name,
                    "type": query.type,
                    "labels": series.labels,
                    "value": value,
                    "timestamp": stamp,
                    "window_start": window.start_time,
                    "window_end": window.end_time,
                    "step_seconds": step,
                }
                if result.result_type != "matrix":
                    event_id, time = self.event_id(window, query.name, key), window.start_time
                elif step is not None:
                    # A range sample at t measures (t - step, t]: its time is where that step begins.
                    event_id, time = self.event_id(window, query.name, key, stamp), _rfc3339(ts - step)
                else:
                    # An instant query of a range selector (x[{window}]): the raw samples, at their own times.
                    event_id, time = self.event_id(window, query.name, key, stamp), stamp
                if self.mapping is None:
                    subject = series.labels.get(subject_label)
                    if not subject:
                        drop("missing_subject", series.labels)
                        continue
                    data: dict[str, Any] = {k: v for k, v in series.labels.items() if k != "__name__"}
                    data["value"] = value
                    out.append(
                        {"specversion": "1.0", "id": event_id, "source": self.source, "type": query.name,
                         "subject": subject, "time": time, "data": data}
                    )  # fmt: skip
                    continue
                defaults = {"specversion": "1.0", "id": event_id, "source": self.source, "type": query.name,
                            "time": time}  # fmt: skip
                event = self._map(query, record, meta, defaults)
                if event is None:
                    drop("mapped_to_none", series.labels)
                    continue
                out.append(event)
        for reason, count in dropped.items():
            self._dropped.labels(receiver=self.id, query=query.name, reason=reason).inc(count)
            if reason == "mapped_to_none":
                continue  # the operator's mapping asked for it
            why = f"without label {subject_label!r}" if reason == "missing_subject" else "with a NaN or infinite value"
            self.log.warning(
                "receiver %s: query %r: %d record(s) %s skipped in window %s (first: %s)",
                self.id, query.name, count, why, window, _show(example[reason]),
            )  # fmt: skip
        return out

    def _map(
        self, query: QueryConfig, record: dict[str, Any], meta: Meta, defaults: dict[str, Any]
    ) -> dict[str, Any] | None:
        assert self.mapping is not None
        try:
            return self.mapping.to_event(record, meta, defaults)
        except ValueError as exc:
            where = f"receiver {self.id}: query {query.name!r}: mapping of series {_show(record['labels'])}"
            raise PrometheusQueryError(f"{where} {exc}") from None


def _unix(t: float) -> str:
    return f"{t:.3f}".rstrip("0").rstrip(".")


def _show(labels: dict[str, str]) -> str:
    inner = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"
