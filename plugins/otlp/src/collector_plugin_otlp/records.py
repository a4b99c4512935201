"""OTLP messages into records for mappings: plain JSON values, attributes flattened to dicts.

* logs: one record per LogRecord;
* metrics: one record per data point (sums, gauges, histograms, exponential
  histograms and summaries), with the series key that identifies its time
  series (resource, scope, metric name and type, point attributes);
* traces: one record per span.

Times are RFC 3339 strings in UTC (``2024-05-01T12:00:00.123456789Z``, as
many fraction digits as needed), ``None`` when the sender left them unset.
Trace and span ids are lower-case hex, ``None`` when empty.  Bytes values of
attributes are base64.  Records of one resource and scope share the
``resource`` and ``scope`` dicts: mappings read them, they must not change them.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

_SCALARS = frozenset({"string_value", "bool_value", "int_value", "double_value"})

SPAN_KINDS = ("unspecified", "internal", "server", "client", "producer", "consumer")
STATUS_CODES = ("unset", "ok", "error")
TEMPORALITIES = (None, "delta", "cumulative")  # AggregationTemporality: UNSPECIFIED, DELTA, CUMULATIVE
FLAG_NO_RECORDED_VALUE = 1


def any_value(value: Any) -> Any:
    """An ``AnyValue`` as a plain value (None when empty)."""
    kind = value.WhichOneof("value")
    if kind in _SCALARS:
        return getattr(value, kind)
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return None


def attributes(kvs: Iterable[Any]) -> dict[str, Any]:
    """A ``KeyValue`` list as a dict (a repeated key keeps its last value)."""
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = getattr(v, kind) if kind in _SCALARS else any_value(v)
    return out


_last_second: list[Any] = [None, ""]


def rfc3339(ns: int) -> str | None:
    """Nanoseconds since the epoch as RFC 3339 UTC; None for 0 (unset)."""
    if not ns:
        return None
    sec, frac = divmod(ns, 1_000_000_000)
    if _last_second[0] == sec:  # records of one batch mostly share their second
        base = _last_second[1]
    else:
        base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _last_second[0], _last_second[1] = sec, base
    if not frac:
        return base + "Z"
    if not frac % 1_000_000:
        return f"{base}.{frac // 1_000_000:03d}Z"
    if not frac % 1000:
        return f"{base}.{frac // 1000:06d}Z"
    return f"{base}.{frac:09d}Z"


def hex_id(raw: bytes) -> str | None:
    return raw.hex() if raw else None


def scope_record(scope: Any) -> dict[str, Any]:
    return {"name": scope.name, "version": scope.version, "attributes": attributes(scope.attributes)}


# -- logs ---------------------------------------------------------------------------------


def log_records(request: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    append = out.append
    scalars = _SCALARS
    for rl in request.resource_logs:
        resource = attributes(rl.resource.attributes)
        for sl in rl.scope_logs:
            scope = scope_record(sl.scope)
            for lr in sl.log_records:
                body = lr.body
                kind = body.WhichOneof("value")
                trace_id, span_id = lr.trace_id, lr.span_id
                append(
                    {
                        "signal": "log",
                        "resource": resource,
                        "scope": scope,
                        "time": rfc3339(lr.time_unix_nano),
                        "observed_time": rfc3339(lr.observed_time_unix_nano),
                        "severity_number": lr.severity_number,
                        "severity_text": lr.severity_text,
                        "body": getattr(body, kind) if kind in scalars else any_value(body) if kind else None,
                        "attributes": attributes(lr.attributes),
                        "trace_id": trace_id.hex() if trace_id else None,
                        "span_id": span_id.hex() if span_id else None,
                        "event_name": lr.event_name or None,
                    }
                )
    return out


# -- traces -------------------------------------------------------------------------------


def span_records(request: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    append = out.append
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            scope = scope_record(ss.scope)
            for span in ss.spans:
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                kind = span.kind
                code = span.status.code
                append(
                    {
                        "signal": "span",
                        "resource": resource,
                        "scope": scope,
                        "name": span.name,
                        "kind": SPAN_KINDS[kind] if 0 <= kind < len(SPAN_KINDS) else str(kind),
                        "trace_id": hex_id(span.trace_id),
                        "span_id": hex_id(span.span_id),
                        "parent_span_id": hex_id(span.parent_span_id),
                        "start_time": rfc3339(start),
                        "end_time": rfc3339(end),
                        "duration_ms": (end - start) / 1e6 if start and end else None,
                        "status": {
                            "code": STATUS_CODES[code] if 0 <= code < len(STATUS_CODES) else str(code),
                            "message": span.status.message,
                        },
                        "attributes": attributes(span.attributes),
                    }
                )
    return out


# -- metrics ------------------------------------------------------------------------------


@dataclass(slots=True)
class MetricPoint:
    """One data point: its record, and what the cumulative-to-delta conversion needs."""

    index: int  # ordinal of the data point in the request (for rejected_data_points)
    record: dict[str, Any]
    series: str  # the series key (also record["series"])
    cumulative: bool  # CUMULATIVE sum/histogram, or a summary: a candidate for delta conversion
    monotonic: bool  # a decrease means a reset
    time: int  # time_unix_nano
    start: int  # start_time_unix_nano
    values: tuple[Any, ...]  # (value,) for sums; (count, sum) otherwise


def _series_hasher(resource: dict[str, Any], scope: Any) -> Any:
    prefix = orjson.dumps([resource, scope.name, scope.version], option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(prefix)


def _series(base: Any, name: str, kind: str, attrs: dict[str, Any]) -> str:
    h = base.copy()
    h.update(orjson.dumps([name, kind, attrs], option=orjson.OPT_SORT_KEYS))
    return h.hexdigest()[:32]


def metric_points(request: Any) -> tuple[list[MetricPoint], int]:
    """Every data point that has a value, in request order; and how many data points the request held."""
    out: list[MetricPoint] = []
    total = 0
    for rm in request.resource_metrics:
        resource = attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            scope = scope_record(sm.scope)
            base = _series_hasher(resource, sm.scope)
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is None:
                    continue
                data = getattr(metric, kind)
                if kind == "gauge":
                    temporality, monotonic = None, None
                elif kind == "summary":
                    temporality, monotonic = "cumulative", True  # summaries are cumulative by definition
                else:
                    t = data.aggregation_temporality
                    temporality = TEMPORALITIES[t] if 0 <= t < len(TEMPORALITIES) else None
                    monotonic = data.is_monotonic if kind == "sum" else True
                common = {
                    "signal": "metric",
                    "resource": resource,
                    "scope": scope,
                    "name": metric.name,
                    "unit": metric.unit,
                    "type": kind,
                    "temporality": temporality,
                    "monotonic": monotonic,
                }
                cumulative = temporality == "cumulative"
                for dp in data.data_points:
                    index = total
                    total += 1
                    if dp.flags & FLAG_NO_RECORDED_VALUE:
                        continue
                    attrs = attributes(dp.attributes)
                    series = _series(base, metric.name, kind, attrs)
                    record = {
                        **common,
                        "attributes": attrs,
                        "start_time": rfc3339(dp.start_time_unix_nano),
                        "time": rfc3339(dp.time_unix_nano),
                    }
                    if kind in ("sum", "gauge"):
                        which = dp.WhichOneof("value")
                        value = getattr(dp, which) if which else None
                        record["value"] = value
                        values: tuple[Any, ...] = (value,)
                    else:
                        total_sum = dp.sum if kind == "summary" or dp.HasField("sum") else None
                        record["count"] = dp.count
                        record["sum"] = total_sum
                        values = (dp.count, total_sum)
                    record["series"] = series
                    out.append(
                        MetricPoint(
                            index,
                            record,
                            series,
                            cumulative and values[0] is not None,
                            bool(monotonic),
                            dp.time_unix_nano,
                            dp.start_time_unix_nano,
                            values,
                        )
                    )
    return out, total


def count_items(signal: str, request: Any) -> int:
    """How many log records, data points or spans a request holds."""
    if signal == "logs":
        return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
    if signal == "traces":
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    n = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    n += len(getattr(metric, kind).data_points)
    return n
