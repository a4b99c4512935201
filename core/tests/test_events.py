"""Tests of collector.events and the HTTP intake: body parsing, OpenMeter validation, defaults."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.builtin.http.intake import ACCEPTED_MEDIA_TYPES, IntakeError, media_type, parse_events, problem
from collector.errors import CollectorError, RecordError
from collector.events import (
    STABLE_ID_NAMESPACE,
    fill_defaults,
    format_time,
    stable_id,
    validate_event,
    validate_events,
)

SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"


def event(**overrides: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "specversion": "1.0",
        "id": "00001",
        "source": "service-0",
        "type": "api-calls",
        "subject": "customer-1",
        "time": "2023-01-01T00:00:00.001Z",
        "data": {"duration_ms": 1, "method": "GET"},
    }
    for key, value in overrides.items():
        if value is _DROP:
            ev.pop(key, None)
        else:
            ev[key] = value
    return ev


_DROP = object()


def only_error(ev: object) -> RecordError:
    errors = validate_event(ev, 3)
    assert len(errors) == 1, errors
    assert errors[0].index == 3
    return errors[0]


# ---------------------------------------------------------------- media types


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("application/json; charset=utf-8", "application/json"),
        ("  Application/CloudEvents+JSON ;charset=UTF-8", SINGLE),
        (BATCH, BATCH),
        ("", ""),
        (None, ""),
    ],
)
def test_media_type(header: str | None, expected: str) -> None:
    assert media_type(header) == expected


def test_accepted_media_types() -> None:
    assert frozenset({SINGLE, BATCH, JSON}) == ACCEPTED_MEDIA_TYPES


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "ctype",
    [
        SINGLE,
        f"{SINGLE}; charset=utf-8",
        f'{SINGLE}; charset="UTF-8"',
        JSON,
        f"{JSON};charset=Utf-8",
    ],
)
def test_parse_single_object(ctype: str) -> None:
    ev = event()
    assert parse_events(orjson.dumps(ev), ctype) == [ev]


@pytest.mark.parametrize("ctype", [BATCH, f"{BATCH}; charset=utf-8", JSON, f"{JSON}; charset=UTF-8"])
def test_parse_array(ctype: str) -> None:
    evs = [event(id="1"), event(id="2")]
    assert parse_events(orjson.dumps(evs), ctype) == evs


@pytest.mark.parametrize(
    "ctype",
    [
        None,
        "",
        "text/plain",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/x-ndjson",
    ],
)
def test_unsupported_media_type_is_415_naming_accepted(ctype: str | None) -> None:
    with pytest.raises(IntakeError) as info:
        parse_events(b"{}", ctype)
    assert info.value.status == 415
    assert info.value.title == "Unsupported Media Type"
    for accepted in ACCEPTED_MEDIA_TYPES:
        assert accepted in info.value.detail


@pytest.mark.parametrize("charset", ["latin-1", "utf-16", '"iso-8859-1"', "utf8"])
def test_non_utf8_charset_is_415(charset: str) -> None:
    with pytest.raises(IntakeError) as info:
        parse_events(b"{}", f"{JSON}; charset={charset}")
    assert info.value.status == 415
    assert "UTF-8" in info.value.detail


def test_invalid_json_is_400_with_position() -> None:
    with pytest.raises(IntakeError) as info:
        parse_events(b'{"id": "1",\n "source": }', JSON)
    err = info.value
    assert err.status == 400
    assert "not valid JSON" in err.detail
    assert "line 2 column" in err.detail and "(char " in err.detail


@pytest.mark.parametrize("body", [b"", b"\xff\xfe{}", b"\xef\xbb\xbf{}", b"[" * 5000])
def test_undecodable_bodies_are_400(body: bytes) -> None:
    with pytest.raises(IntakeError) as info:
        parse_events(body, JSON)
    assert info.value.status == 400


def test_empty_array_is_400_empty_batch() -> None:
    for ctype in (BATCH, JSON):
        with pytest.raises(IntakeError) as info:
            parse_events(b"[]", ctype)
        assert info.value.status == 400
        assert "empty batch" in info.value.detail


@pytest.mark.parametrize(
    ("body", "ctype", "words"),
    [
        (b"[{}]", SINGLE, "exactly one event"),
        (b"{}", BATCH, "JSON array"),
        (b"42", JSON, "got a number"),
        (b'"x"', SINGLE, "got a string"),
        (b"null", BATCH, "got null"),
        (b"true", JSON, "got a boolean"),
    ],
)
def test_wrong_top_level_shape_is_400(body: bytes, ctype: str, words: str) -> None:
    with pytest.raises(IntakeError) as info:
        parse_events(body, ctype)
    assert info.value.status == 400
    assert words in info.value.detail


def test_non_object_elements_are_returned_and_reported_per_index() -> None:
    events = parse_events(b'[{"a": 1}, 7, [1], "x", null]', BATCH)
    assert events == [{"a": 1}, 7, [1], "x", None]
    errors = validate_events(events)
    whole = [e for e in errors if e.field is None]
    assert [(e.index, e.message) for e in whole] == [
        (1, "each event must be a JSON object, got a number"),
        (2, "each event must be a JSON object, got an array"),
        (3, "each event must be a JSON object, got a string"),
        (4, "each event must be a JSON object, got null"),
    ]


def test_intake_error_is_a_collector_error_and_makes_a_problem() -> None:
    err = IntakeError(400, "bad")
    assert isinstance(err, CollectorError)
    assert err.as_problem() == {
        "type": "about:blank",
        "title": "Bad Request",
        "status": 400,
        "detail": "bad",
    }


# ---------------------------------------------------------------- validation


def test_valid_event_has_no_errors() -> None:
    assert validate_event(event(), 0) == []
    minimal = event(time=_DROP, data=_DROP)
    assert validate_event(minimal, 0) == []
    nullable = event(time=None, data=None, datacontenttype=None, dataschema=None)
    assert validate_event(nullable, 0) == []
    extras = event(datacontenttype="application/json", dataschema="https://x/s", region="eu1", n2=5)
    assert validate_event(extras, 0) == []


def test_non_object_event() -> None:
    err = only_error(["not", "an", "event"])
    assert err.field is None
    assert err.message == "each event must be a JSON object, got an array"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (_DROP, 'specversion is required: set it to "1.0"'),
        ("0.3", 'specversion must be "1.0"'),
        (1.0, 'specversion must be the string "1.0", got a number 1.0'),
    ],
)
def test_specversion(value: object, words: str) -> None:
    err = only_error(event(specversion=value))
    assert err.field == "specversion"
    assert words in err.message


@pytest.mark.parametrize(
    ("name", "purpose"),
    [
        ("id", "unique identifier"),
        ("source", "where the usage was measured"),
        ("type", "kind of usage"),
        ("subject", "the customer or resource the usage belongs to"),
    ],
)
def test_required_strings(name: str, purpose: str) -> None:
    missing = only_error(event(**{name: _DROP}))
    assert (missing.field, missing.message.split(":")[0]) == (name, f"{name} is required")
    assert purpose in missing.message
    assert only_error(event(**{name: None})).message == missing.message

    empty = only_error(event(**{name: ""}))
    assert empty.field == name
    assert empty.message.startswith(f"{name} must not be empty: ")

    wrong = only_error(event(**{name: 42}))
    assert wrong.field == name
    assert wrong.message.startswith(f"{name} must be a string (")
    assert wrong.message.endswith("got a number 42")


def test_subject_message_is_readable() -> None:
    err = only_error(event(subject=_DROP))
    assert err.message == "subject is required: the customer or resource the usage belongs to"


@pytest.mark.parametrize(
    "value",
    [
        "2023-01-01T00:00:00Z",
        "2023-01-01T00:00:00.1Z",
        "2023-01-01T00:00:00.123456789Z",
        "2023-01-01T00:00:00.123456789123Z",  # RFC 3339 allows any number of digits
        "2023-01-01T00:00:00+02:00",
        "2023-01-01T00:00:00.5-05:30",
        "2024-02-29T23:59:59+23:59",
        "0001-01-01T00:00:00Z",
    ],
)
def test_time_accepts_rfc3339(value: str) -> None:
    assert validate_event(event(time=value), 0) == []


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("2023-01-01T00:00:00", "needs a timezone"),
        ("2023-01-01T00:00:00.123", "needs a timezone"),
        ("2023-01-01 00:00:00Z", 'upper-case "T"'),
        ("2023-01-01t00:00:00Z", 'upper-case "T"'),
        ("2023-01-01T00:00:00z", 'upper-case "Z"'),
        ("2023-01-01T00:00:00+0200", "invalid UTC offset"),
        ("2023-01-01T00:00:00+24:00", "invalid UTC offset"),
        ("2023-01-01T00:00:00+02:60", "invalid UTC offset"),
        ("2023-01-01T00:00:00.Z", "fractional seconds"),
        ("2023-01-01T00:00:00,5Z", "fractional seconds"),
        ("2023-01-01T00:00:0012Z", "fractional seconds"),
        ("2023-02-30T00:00:00Z", "day is out of range for month"),
        ("2023-13-01T00:00:00Z", "month must be in 1..12"),
        ("2023-01-01T24:00:00Z", "hour must be in 0..23"),
        ("2016-12-31T23:59:60Z", "second must be in 0..59"),
        ("0000-01-01T00:00:00Z", "not a real date"),
        ("2023-01-01", "RFC 3339 timestamp such as"),
        ("2023-W01-1T00:00:00Z", "RFC 3339 timestamp such as"),
        ("20230101T000000Z", "RFC 3339 timestamp such as"),
        ("２０２３-01-01T00:00:00Z", "RFC 3339 timestamp such as"),
        ("yesterday", "RFC 3339 timestamp such as"),
        ("", "RFC 3339 timestamp such as"),
    ],
)
def test_time_rejects(value: str, words: str) -> None:
    err = only_error(event(time=value))
    assert err.field == "time"
    assert words in err.message


def test_time_must_be_a_string() -> None:
    err = only_error(event(time=1700000000))
    assert err.field == "time"
    assert "got a number (convert epoch numbers to RFC 3339)" in err.message


def test_time_check_is_linear_on_hostile_input() -> None:
    hostile = "2023-01-01T00:00:00." + "1" * 200_000 + "+"
    start = time.perf_counter()
    assert only_error(event(time=hostile)).field == "time"
    assert time.perf_counter() - start < 0.1
    assert len(only_error(event(time=hostile)).message) < 300  # value is truncated


@pytest.mark.parametrize(("value", "kind"), [([1], "an array"), (5, "a number"), ("x", "a string")])
def test_data_must_be_object_or_null(value: object, kind: str) -> None:
    err = only_error(event(data=value))
    assert err.field == "data"
    assert err.message.startswith("data must be a JSON object (or null)")
    assert err.message.endswith(f"got {kind}")


@pytest.mark.parametrize("value", ["text/plain", "application/json; charset=utf-8", 1])
def test_datacontenttype(value: object) -> None:
    err = only_error(event(datacontenttype=value))
    assert err.field == "datacontenttype"
    assert err.message.startswith('datacontenttype must be "application/json" or left out')


@pytest.mark.parametrize("value", ["", 3])
def test_dataschema(value: object) -> None:
    err = only_error(event(dataschema=value))
    assert err.field == "dataschema"


def test_data_base64_is_refused() -> None:
    err = only_error(event(data_base64="e30="))
    assert err.field == "data_base64"
    assert "JSON object" in err.message


@pytest.mark.parametrize("name", ["userId", "user_id", "user-id", "ünï", "", "A"])
def test_extension_names_must_be_lowercase_alphanumeric(name: str) -> None:
    err = only_error(event(**{name: "x"}))
    assert err.field == name
    assert "lowercase letters a-z and digits 0-9" in err.message
    assert "into data" in err.message


def test_extension_name_suggests_a_spelling_and_length_is_not_enforced() -> None:
    assert '(e.g. "userid")' in only_error(event(user_id="u")).message
    assert validate_event(event(averyveryverylongextensionname="x", x9=1, flag=True), 0) == []


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2]])
def test_extension_values_cannot_be_structured(value: object) -> None:
    err = only_error(event(region=value))
    assert err.field == "region"
    assert "cannot hold" in err.message and "move it into data" in err.message


def test_all_problems_of_an_event_are_reported() -> None:
    bad = {"specversion": "0.3", "id": "", "data": [], "time": "now", "Bad": 1}
    fields = [e.field for e in validate_event(bad, 0)]
    assert fields == ["specversion", "id", "source", "type", "subject", "time", "data", "Bad"]


def test_validate_events_keeps_index_order() -> None:
    errors = validate_events([event(), event(subject=_DROP), event(), event(type="", id=1)])
    assert [(e.index, e.field) for e in errors] == [(1, "subject"), (3, "id"), (3, "type")]
    assert validate_events([]) == []


def test_validation_is_fast() -> None:
    # Measured ~740k valid events/s on one core; assert a floor loose enough
    # for slow shared CI runners.
    batch = [event(id=str(i)) for i in range(20_000)]
    start = time.perf_counter()
    assert validate_events(batch) == []
    elapsed = time.perf_counter() - start
    assert 20_000 / elapsed > 60_000


# ---------------------------------------------------------------- defaults and ids

NOW = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_stable_id_is_uuid5_over_canonical_json() -> None:
    a = stable_id("x", {"b": 1, "a": [1, 2]})
    assert a == stable_id("x", {"a": [1, 2], "b": 1})  # key order does not matter
    assert a != stable_id("x", {"a": [2, 1], "b": 1})
    assert a != stable_id("y", {"a": [1, 2], "b": 1})
    assert uuid.UUID(a).version == 5
    canonical = orjson.dumps(["x", {"a": [1, 2], "b": 1}]).decode()
    assert a == str(uuid.uuid5(STABLE_ID_NAMESPACE, canonical))


def test_stable_id_refuses_what_it_cannot_serialise() -> None:
    with pytest.raises(TypeError):
        stable_id(object())
    with pytest.raises(TypeError):
        stable_id(10**30)


def test_fill_defaults_fills_missing_and_does_not_mutate() -> None:
    ev = {"source": "s", "type": "t", "subject": "c", "data": {"n": 1}}
    before = orjson.dumps(ev)
    out = fill_defaults(ev, now=NOW)
    assert orjson.dumps(ev) == before
    assert out is not ev
    assert out["specversion"] == "1.0"
    assert out["time"] == "2024-05-01T12:00:00.123Z"
    assert uuid.UUID(out["id"]).version == 5
    assert validate_event(out, 0) == []


def test_fill_defaults_id_is_stable_across_retries_at_different_times() -> None:
    ev = {"source": "s", "type": "t", "subject": "c", "data": {"n": 1}}
    first = fill_defaults(ev, now=NOW)
    retry = fill_defaults(dict(reversed(list(ev.items()))), now=NOW + timedelta(minutes=5))
    assert first["id"] == retry["id"]
    assert first["time"] != retry["time"]
    # Explicit specversion or null id/time mean the same event.
    assert fill_defaults(dict(ev, specversion="1.0", id=None, time=None), now=NOW)["id"] == first["id"]


@pytest.mark.parametrize(
    "change",
    [
        {"data": {"n": 2}},
        {"subject": "other"},
        {"region": "eu1"},
        {"time": "2024-05-01T00:00:00Z"},
    ],
)
def test_fill_defaults_id_differs_when_content_differs(change: dict[str, Any]) -> None:
    ev = {"source": "s", "type": "t", "subject": "c", "data": {"n": 1}}
    assert fill_defaults(ev, now=NOW)["id"] != fill_defaults({**ev, **change}, now=NOW)["id"]


def test_fill_defaults_keeps_client_values() -> None:
    ev = event(time="2020-01-01T00:00:00+02:00", specversion="0.3", id="")
    out = fill_defaults(ev, now=NOW)
    assert out == ev  # present values untouched, even invalid ones
    timed = {"source": "s", "type": "t", "subject": "c", "time": "2020-01-01T00:00:00Z"}
    out = fill_defaults(timed, now=NOW)
    assert out["time"] == "2020-01-01T00:00:00Z"
    assert fill_defaults(timed, now=NOW + timedelta(days=1))["id"] == out["id"]


def test_fill_defaults_passes_non_objects_and_needs_aware_now() -> None:
    assert fill_defaults(7, now=NOW) == 7  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        fill_defaults({"source": "s"}, now=datetime(2024, 5, 1))


def test_format_time_converts_to_utc() -> None:
    plus2 = timezone(timedelta(hours=2))
    assert format_time(datetime(2024, 5, 1, 14, 0, 0, 999999, tzinfo=plus2)) == "2024-05-01T12:00:00.999Z"


# ---------------------------------------------------------------- problem documents


def test_problem_lists_invalid_events_with_ids() -> None:
    events = [event(id="a"), event(id="b", subject=""), 5, event(id="", type=_DROP)]
    errors = validate_events(events)
    body = problem(400, "Bad Request", "2 of 4 events are invalid", errors, events=events)
    assert body["type"] == "about:blank"
    assert (body["title"], body["status"], body["detail"]) == (
        "Bad Request",
        400,
        "2 of 4 events are invalid",
    )
    invalid = body["invalid"]
    assert invalid[0] == {
        "index": 1,
        "field": "subject",
        "message": "subject must not be empty: the customer or resource the usage belongs to",
        "id": "b",
    }
    assert invalid[1] == {
        "index": 2,
        "field": None,
        "message": "each event must be a JSON object, got a number",
    }
    assert [i["field"] for i in invalid[2:]] == ["id", "type"]
    assert all("id" not in i for i in invalid[2:])
    orjson.dumps(body)  # serialisable as is


def test_problem_without_errors_has_no_invalid_member() -> None:
    assert "invalid" not in problem(415, "Unsupported Media Type", "x")
    assert problem(400, "Bad Request", "x", [])["invalid"] == []


# ---------------------------------------------------------------- fuzz

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=25,
)
_event_like = st.fixed_dictionaries(
    {},
    optional={
        "specversion": st.sampled_from(["1.0", "0.3", ""]) | _json_values,
        "id": st.text(max_size=8) | _json_values,
        "source": st.text(max_size=8),
        "type": st.text(max_size=8),
        "subject": st.text(max_size=8) | _json_values,
        "time": st.sampled_from(["2023-01-01T00:00:00Z", "2023-01-01T00:00:00+02:00"])
        | st.text(alphabet="0123456789-:T.Zz+ t", min_size=15, max_size=32)
        | _json_values,
        "data": _json_values,
        "datacontenttype": st.sampled_from(["application/json", "text/plain"]) | _json_values,
    },
).flatmap(lambda base: st.dictionaries(st.text(max_size=8), _json_values, max_size=3).map(lambda ext: {**ext, **base}))
_ctypes = st.sampled_from(
    [
        SINGLE,
        BATCH,
        JSON,
        f"{JSON}; charset=utf-8",
        f"{BATCH};charset=latin-1",
        "text/plain",
        None,
        "",
    ]
)
_fuzz = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_pipeline(body: bytes, ctype: str | None) -> None:
    try:
        events = parse_events(body, ctype)
    except IntakeError as err:
        assert err.status in (400, 415)
        return
    assert isinstance(events, list) and events
    filled = [fill_defaults(e, now=NOW) for e in events]
    errors = validate_events(filled)
    assert all(isinstance(e, RecordError) and 0 <= e.index < len(events) for e in errors)
    orjson.dumps(problem(400, "Bad Request", "x", errors, events=filled))


@_fuzz
@given(body=st.binary(max_size=200), ctype=_ctypes)
def test_fuzz_arbitrary_bytes(body: bytes, ctype: str | None) -> None:
    _check_pipeline(body, ctype)


@_fuzz
@given(doc=_json_values | st.lists(_event_like, max_size=4) | _event_like, ctype=_ctypes)
def test_fuzz_arbitrary_json(doc: object, ctype: str | None) -> None:
    _check_pipeline(orjson.dumps(doc), ctype)
    for index, ev in enumerate(doc if isinstance(doc, list) else [doc]):
        for err in validate_event(ev, index):
            assert err.index == index and err.message
