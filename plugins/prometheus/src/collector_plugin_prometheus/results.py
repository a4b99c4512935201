"""Reading Prometheus HTTP API answers: the envelope, errors, and the four result types.

Pure functions over bytes and JSON, so they are tested with canned answers.
The API's shape (https://prometheus.io/docs/prometheus/latest/querying/api/)::

    {"status": "success", "data": {"resultType": "vector", "result": [...]}, "warnings": [...]}
    {"status": "error", "errorType": "bad_data", "error": "parse error ..."}

Result types: ``vector`` (``[{"metric": {...}, "value": [ts, "v"]}]``),
``matrix`` (``[{"metric": {...}, "values": [[ts, "v"], ...]}]``), ``scalar``
(``[ts, "v"]``) and ``string`` (``[ts, "text"]``).  Sample values arrive as
strings (``"NaN"``, ``"+Inf"`` included) and are returned as floats; string
results keep their text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

_BODY_EXCERPT = 300


class PrometheusAPIError(Exception):
    """Prometheus (or a proxy in front of it) answered with an error."""

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type

    @property
    def is_auth(self) -> bool:
        return self.status in (401, 403)


@dataclass
class Series:
    """One series of a result: its labels and its samples ``(unix seconds, value)``."""

    labels: dict[str, str]
    samples: list[tuple[float, float | str]] = field(default_factory=list)


@dataclass
class QueryResult:
    result_type: str
    series: list[Series]
    warnings: list[str] = field(default_factory=list)


def _excerpt(body: bytes) -> str:
    text = body.decode("utf-8", errors="replace").strip()
    text = " ".join(text.split())
    return text if len(text) <= _BODY_EXCERPT else text[: _BODY_EXCERPT - 3] + "..."


def parse_response(status: int, body: bytes) -> QueryResult:
    """The result of an API answer, or :class:`PrometheusAPIError` describing what went wrong."""
    try:
        doc: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and doc.get("status") == "error":
        error_type = str(doc.get("errorType") or "error")
        raise PrometheusAPIError(
            f"Prometheus answered HTTP {status} {error_type}: {doc.get('error') or '(no message)'}",
            status=status,
            error_type=error_type,
        )
    if status in (401, 403):
        what = "unauthorized" if status == 401 else "forbidden"
        detail = f": {_excerpt(body)}" if body else ""
        raise PrometheusAPIError(
            f"HTTP {status} {what}: the server refused our credentials (check token/username/password){detail}",
            status=status,
        )
    if status != 200:
        detail = _excerpt(body) or "(empty body)"
        raise PrometheusAPIError(f"HTTP {status}: {detail}", status=status)
    if not isinstance(doc, dict) or doc.get("status") != "success" or not isinstance(doc.get("data"), dict):
        raise PrometheusAPIError(
            f"not a Prometheus API answer (HTTP 200 but no status/data): {_excerpt(body) or '(empty body)'}",
            status=status,
        )
    data = doc["data"]
    warnings = [str(w) for w in doc.get("warnings") or []]
    return QueryResult(str(data.get("resultType")), parse_data(data), warnings)


def _value(raw: Any, *, text: bool = False) -> float | str:
    if text:
        return str(raw)
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise PrometheusAPIError(f"sample value {raw!r} is not a number") from None


def _sample(pair: Any, *, text: bool = False) -> tuple[float, float | str]:
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        raise PrometheusAPIError(f"malformed sample {pair!r}; expected [timestamp, value]")
    try:
        ts = float(pair[0])
    except (TypeError, ValueError):
        raise PrometheusAPIError(f"malformed sample timestamp {pair[0]!r}") from None
    return ts, _value(pair[1], text=text)


def _labels(item: Any) -> dict[str, str]:
    metric = item.get("metric") if isinstance(item, dict) else None
    if not isinstance(metric, dict):
        raise PrometheusAPIError(f"malformed series {item!r}; expected an object with 'metric'")
    return {str(k): str(v) for k, v in metric.items()}


def parse_data(data: dict[str, Any]) -> list[Series]:
    """The series of ``data`` (the API's ``data`` member), whatever its result type."""
    result_type = data.get("resultType")
    result = data.get("result")
    if result_type == "vector":
        out = []
        for item in _list(result, result_type):
            if "value" not in item:
                raise _histogram_or_malformed(item)
            out.append(Series(_labels(item), [_sample(item["value"])]))
        return out
    if result_type == "matrix":
        out = []
        for item in _list(result, result_type):
            if "values" not in item:
                raise _histogram_or_malformed(item)
            out.append(Series(_labels(item), [_sample(p) for p in item["values"] or []]))
        return out
    if result_type == "scalar":
        return [Series({}, [_sample(result)])]
    if result_type == "string":
        return [Series({}, [_sample(result, text=True)])]
    raise PrometheusAPIError(f"unknown result type {result_type!r}")


def _list(result: Any, result_type: str) -> list[Any]:
    if not isinstance(result, list):
        raise PrometheusAPIError(f"malformed {result_type} result: {str(result)[:_BODY_EXCERPT]}")
    return result


def _histogram_or_malformed(item: Any) -> PrometheusAPIError:
    if isinstance(item, dict) and ("histogram" in item or "histograms" in item):
        return PrometheusAPIError(
            "native histogram samples are not supported; turn them into numbers in the query "
            "(histogram_count(), histogram_sum(), histogram_quantile())"
        )
    return PrometheusAPIError(f"malformed series {str(item)[:_BODY_EXCERPT]}")
