"""Fuzzing the decoders (bounded): whatever arrives, the answer is a message or a DecodeError, never a crash.

A decoded request must also turn into records that serialise as JSON.
"""

from __future__ import annotations

import math

import orjson
import pytest
from collector_plugin_otlp.decode import DecodeError, parse_json, parse_protobuf
from collector_plugin_otlp.records import any_value, log_records, metric_points, span_records
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from otlp_support import anyvalue, logs_request, spans_request, sum_request

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIGNALS = ["logs", "metrics", "traces"]
VALID = {
    "logs": logs_request(["a", {"k": [1, 2.5, True]}], user="acme").SerializeToString(),
    "metrics": sum_request([(1, 5, {"u": "a"}), (2, 7.5, {"u": "b"})]).SerializeToString(),
    "traces": spans_request(2, user="acme").SerializeToString(),
}


def records(signal: str, message) -> list:
    if signal == "logs":
        return log_records(message)
    if signal == "traces":
        return span_records(message)
    return [p.record for p in metric_points(message)[0]]


def decodes_or_refuses(signal: str, decode, body) -> None:
    try:
        message = decode(signal, body)
    except DecodeError as exc:
        assert str(exc)  # a readable reason
        return
    orjson.dumps(records(signal, message))  # whatever decoded converts into JSON values


@FUZZ
@given(signal=st.sampled_from(SIGNALS), body=st.binary(max_size=512))
def test_arbitrary_bytes_as_protobuf(signal, body):
    decodes_or_refuses(signal, parse_protobuf, body)


@FUZZ
@given(
    signal=st.sampled_from(SIGNALS),
    data=st.data(),
)
def test_mutated_valid_protobuf(signal, data):
    body = bytearray(VALID[signal])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(body) - 1))
        body[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    decodes_or_refuses(signal, parse_protobuf, bytes(body[:cut]))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=30,
)
OTLP_KEYS = st.sampled_from(
    ["resourceLogs", "resourceSpans", "resourceMetrics", "scopeLogs", "scopeSpans", "scopeMetrics", "logRecords",
     "spans", "metrics", "traceId", "spanId", "attributes", "key", "value", "stringValue", "intValue", "body",
     "sum", "dataPoints", "asInt", "timeUnixNano", "kvlistValue", "values", "arrayValue", "resource", "gauge"]
)  # fmt: skip
OTLP_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=34),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(OTLP_KEYS, children, max_size=4),
    max_leaves=40,
)


@FUZZ
@given(signal=st.sampled_from(SIGNALS), value=JSON_VALUES | OTLP_LIKE)
def test_arbitrary_json(signal, value):
    decodes_or_refuses(signal, parse_json, _dumps(value))


def _dumps(value) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # integers beyond 64 bits: let the stdlib write them
        import json

        return json.dumps(value).encode()


@FUZZ
@given(signal=st.sampled_from(SIGNALS), body=st.binary(max_size=256))
def test_arbitrary_bytes_as_json(signal, body):
    decodes_or_refuses(signal, parse_json, body)


PLAIN = st.recursive(
    st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(value=PLAIN)
def test_attribute_values_round_trip(value):
    decoded = any_value(anyvalue(value))
    assert decoded == value or (isinstance(value, float) and math.isnan(value))


@FUZZ
@given(trace_id=st.binary(min_size=16, max_size=16), span_id=st.binary(min_size=8, max_size=8))
def test_otlp_json_ids_are_hex_both_ways(trace_id, span_id):
    request = logs_request(["x"])
    record = request.resource_logs[0].scope_logs[0].log_records[0]
    record.trace_id, record.span_id = trace_id, span_id
    data = json_format.MessageToDict(request)
    entry = data["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    entry["traceId"], entry["spanId"] = trace_id.hex(), span_id.hex()
    (decoded,) = log_records(parse_json("logs", orjson.dumps(data)))
    assert decoded["trace_id"] == trace_id.hex() and decoded["span_id"] == span_id.hex()


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    n, size = len(payload), b""
    while True:
        byte, n = n & 0x7F, n >> 7
        size += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    return bytes([number << 3 | 2]) + size + payload


@pytest.mark.parametrize("depth", [20, 150, 3000])
def test_deeply_nested_values_are_decoded_or_refused_never_crash(depth):
    # JSON: a log body of `depth` nested kvlists
    open_, close = '{"kvlistValue": {"values": [{"key": "k", "value": ' * depth, "}]}}" * depth
    deep = f'{open_}{{"stringValue": "x"}}{close}'
    body = f'{{"resourceLogs": [{{"scopeLogs": [{{"logRecords": [{{"body": {deep}}}]}}]}}]}}'.encode()
    # protobuf: the same structure, written by hand (AnyValue.kvlist_value=6, KeyValueList.values=1,
    # KeyValue.value=2, LogRecord.body=5, ScopeLogs.log_records=2, ResourceLogs.scope_logs=2, request=1)
    value = _field(1, b"x")
    for _ in range(depth):
        value = _field(6, _field(1, _field(2, value)))
    proto = _field(1, _field(2, _field(2, _field(5, value))))
    for decode, raw in ((parse_json, body), (parse_protobuf, proto)):
        try:
            message = decode("logs", raw)
        except DecodeError as exc:
            assert depth > 20 and len(str(exc)) < 600, str(exc)
            continue
        (record,) = log_records(message)
        orjson.dumps(record)
