"""OTLP requests from bytes (protobuf or OTLP/JSON), and the answers back to bytes.

OTLP/JSON is the protobuf JSON mapping with the OTLP exceptions: trace and
span ids are hex strings (not base64), enums are integers (names are
accepted too), field names are lowerCamelCase (the original snake_case names
are accepted too) and unknown fields are ignored, as the specification asks
of receivers.  Protobuf is parsed by the protobuf runtime (upb); unknown
fields are ignored there as well.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError as _ProtoDecodeError
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

Signal = Literal["logs", "metrics", "traces"]
Encoding = Literal["protobuf", "json"]


@dataclass(frozen=True)
class SignalKind:
    """What differs between the three Export services."""

    name: Signal
    request: type[Message]
    response: type[Message]
    rejected_field: str  # the partial_success counter
    item: str  # what one rejected item is called in messages
    service: str  # the gRPC service name
    path: str  # the OTLP/HTTP path


SIGNALS: dict[Signal, SignalKind] = {
    "logs": SignalKind(
        "logs",
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
        "rejected_log_records",
        "log record",
        "opentelemetry.proto.collector.logs.v1.LogsService",
        "/v1/logs",
    ),
    "metrics": SignalKind(
        "metrics",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
        "rejected_data_points",
        "data point",
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        "/v1/metrics",
    ),
    "traces": SignalKind(
        "traces",
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
        "rejected_spans",
        "span",
        "opentelemetry.proto.collector.trace.v1.TraceService",
        "/v1/traces",
    ),
}


class DecodeError(ValueError):
    """The request body is not a valid OTLP request (the client's fault: 400 / INVALID_ARGUMENT)."""


def parse(signal: Signal, body: bytes, encoding: Encoding) -> Message:
    return parse_protobuf(signal, body) if encoding == "protobuf" else parse_json(signal, body)


def parse_protobuf(signal: Signal, body: bytes) -> Message:
    kind = SIGNALS[signal]
    message = kind.request()
    try:
        message.ParseFromString(body)
    except _ProtoDecodeError as exc:
        raise DecodeError(
            f"the body is not a valid protobuf {kind.request.__name__} ({exc}); "
            "send OTLP protobuf, or OTLP/JSON with Content-Type: application/json"
        ) from None
    except RecursionError:
        raise DecodeError(f"the {kind.request.__name__} is nested too deeply") from None
    return message


# Message fields that hold ids: hex strings in OTLP/JSON, base64 in the
# protobuf JSON mapping.  No OTLP message has a map field, so no key a user
# chooses (attribute keys are values of "key") can collide with these.
_ID_FIELDS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})
_HEX = frozenset("0123456789abcdefABCDEF")


def parse_json(signal: Signal, body: bytes) -> Message:
    kind = SIGNALS[signal]
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DecodeError(f"an OTLP/JSON {kind.request.__name__} must be a JSON object, not {_json_type(data)}")
    _hex_ids_to_base64(data)
    message = kind.request()
    try:
        json_format.ParseDict(data, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise DecodeError(f"the body is not a valid OTLP/JSON {kind.request.__name__}: {_shorten(str(exc))}") from None
    except RecursionError:
        raise DecodeError(f"the {kind.request.__name__} is nested too deeply") from None
    return message


def _hex_ids_to_base64(root: Any) -> None:
    """Rewrite hex trace/span ids in place so that the protobuf JSON parser reads them (iterative: no recursion)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in _ID_FIELDS and isinstance(value, str):
                    node[key] = _hex_to_base64(key, value)
                elif isinstance(value, dict | list):
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(v for v in node if isinstance(v, dict | list))


def _hex_to_base64(key: str, value: str) -> str:
    if len(value) % 2 or not _HEX.issuperset(value):
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise DecodeError(
            f"{key} {shown!r} is not hex: OTLP/JSON writes trace and span ids as hex strings "
            "(32 hex digits for a trace id, 16 for a span id), not base64"
        )
    try:
        return base64.b64encode(bytes.fromhex(value)).decode("ascii")
    except (ValueError, binascii.Error):  # pragma: no cover - the check above rules it out
        raise DecodeError(f"{key} {value!r} is not hex") from None


def _shorten(text: str, limit: int = 400) -> str:
    """The parser nests "Failed to parse X field: " once per level; keep the start and the actual reason."""
    if len(text) <= limit:
        return text
    return f"{text[: limit // 3]} ... {text[-(limit - limit // 3) :]}"


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


# -- answers -------------------------------------------------------------------------


def response(signal: Signal, rejected: int = 0, message: str = "") -> Message:
    """The Export response: empty on full success, with ``partial_success`` otherwise."""
    kind = SIGNALS[signal]
    out = kind.response()
    if rejected or message:
        setattr(out.partial_success, kind.rejected_field, rejected)
        out.partial_success.error_message = message
    return out


def encode(message: Message, encoding: Encoding) -> bytes:
    if encoding == "protobuf":
        return message.SerializeToString()
    return orjson.dumps(json_format.MessageToDict(message))


def status(code: int, message: str, retry_after: float | None = None) -> status_pb2.Status:
    """A ``google.rpc.Status`` (``code`` from google.rpc.Code), with RetryInfo when ``retry_after`` is given."""
    out = status_pb2.Status(code=code, message=message)
    if retry_after is not None:
        out.details.add().Pack(retry_info(retry_after))
    return out


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    info = error_details_pb2.RetryInfo()
    whole = int(seconds)
    info.retry_delay.seconds = whole
    info.retry_delay.nanos = round((seconds - whole) * 1e9)
    return info


CODES = code_pb2.Code
