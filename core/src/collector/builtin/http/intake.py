"""HTTP intake: media types, request bodies and RFC 7807 problem documents.

Whole-request problems (wrong media type, broken JSON, wrong top-level shape)
raise :class:`IntakeError`; problems of single events are left to
:func:`collector.events.validate_events`, which names each bad event by index.

The receiver runs::

    events = parse_events(body, request.content_type_header)   # IntakeError -> 4xx
    events = [fill_defaults(e, now=arrival) for e in events]
    errors = validate_events(events)                           # -> 400 + problem(...)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

import orjson

from collector.errors import CollectorError, RecordError
from collector.events import a_json_type, quote_value

SINGLE_MEDIA_TYPE = "application/cloudevents+json"
BATCH_MEDIA_TYPE = "application/cloudevents-batch+json"
JSON_MEDIA_TYPE = "application/json"
ACCEPTED_MEDIA_TYPES: frozenset[str] = frozenset({SINGLE_MEDIA_TYPE, BATCH_MEDIA_TYPE, JSON_MEDIA_TYPE})

# Spelled out once so that every 415 tells the client the same thing.
# orjson reads an integer literal beyond 64 bits as a float, silently losing digits
# (18446744073709551616 would arrive as 1.8446744073709552e+19).  Where the body
# has such a digit run, parse it again with the standard library, which keeps the
# exact int, so validation refuses it with the record's index and field path
# (collector.events.value_errors) instead of billing a rounded number.
# Found with translate + find (about 0.5 ns a byte) rather than a regex (10 ns a byte,
# which quadrupled the parse time of every request).
_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 20


def load_json(body: bytes) -> Any:
    """``orjson.loads``, exact for integers beyond 64 bits (see above); raises ``orjson.JSONDecodeError``."""
    doc = orjson.loads(body)
    if body.translate(_DIGITS_ONLY).find(_LONG_RUN) != -1:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            return doc  # orjson accepted it; keep its reading (validation still checks depth)
    return doc


_ACCEPTED_HINT = (
    f"{SINGLE_MEDIA_TYPE} (one event), {BATCH_MEDIA_TYPE} (a JSON array of events) or {JSON_MEDIA_TYPE} (either)"
)


# ---------------------------------------------------------------------------
# Whole-request errors


class IntakeError(CollectorError):
    """The request as a whole cannot be taken in (HTTP 400 or 415).

    ``title`` defaults to the HTTP reason phrase because the problem documents
    use ``type: about:blank`` (RFC 7807 §4.2); ``detail`` says what to fix.
    """

    def __init__(self, status: int, detail: str, *, title: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title or HTTPStatus(status).phrase
        self.detail = detail

    def as_problem(self) -> dict[str, Any]:
        """The RFC 7807 body to answer with."""
        return problem(self.status, self.title, self.detail)

    def __repr__(self) -> str:
        return f"IntakeError({self.status}, {self.detail!r})"


# ---------------------------------------------------------------------------
# Content type and body parsing


def media_type(content_type_header: str | None) -> str:
    """The lower-cased media type of a Content-Type header, without parameters.

    ``"Application/JSON; charset=utf-8"`` -> ``"application/json"``; a missing
    header gives ``""``.
    """
    if not content_type_header:
        return ""
    return content_type_header.split(";", 1)[0].strip().lower()


def _charset(content_type_header: str) -> str | None:
    """The lower-cased ``charset`` parameter, unquoted, or None when absent."""
    for param in content_type_header.split(";")[1:]:
        name, sep, value = param.partition("=")
        if sep and name.strip().lower() == "charset":
            return value.strip().strip('"').strip().lower()
    return None


def parse_events(body: bytes, content_type: str | None) -> list[Any]:
    """Decode a request body into a list of (candidate) events.

    * ``application/cloudevents+json``: exactly one JSON object.
    * ``application/cloudevents-batch+json``: a non-empty JSON array.
    * ``application/json``: an object (one event) or a non-empty array.

    A ``charset`` parameter is allowed only when it is UTF-8 (JSON is UTF-8 by
    RFC 8259); anything else is 415 rather than a guess at decoding.

    Elements of an array are returned as they are, even when they are not
    objects: a non-object element is a problem of that one event, which
    :func:`validate_event` reports by index together with every other bad
    event, so the client learns about all of them in one round trip.  The
    result is therefore ``list[Any]``; only after :func:`validate_events`
    returns no errors is every element a ``dict``.

    Raises :class:`IntakeError` (415 for media type/charset, 400 for invalid
    JSON, a wrong top-level shape or an empty batch); never anything else.
    """
    mtype = media_type(content_type)
    if not mtype:
        raise IntakeError(415, f"the Content-Type header is missing; send {_ACCEPTED_HINT}")
    if mtype not in ACCEPTED_MEDIA_TYPES:
        raise IntakeError(415, f"Content-Type {quote_value(mtype)} is not supported; send {_ACCEPTED_HINT}")
    assert content_type is not None  # media_type() returned non-empty
    charset = _charset(content_type)
    if charset is not None and charset != "utf-8":
        raise IntakeError(
            415,
            f"charset {quote_value(charset)} is not supported: send the body as UTF-8 (charset=utf-8, or no charset "
            "parameter)",
        )

    if not body:
        raise IntakeError(400, "the request body is empty; send a CloudEvent or an array of them")
    try:
        doc = load_json(body)
    except orjson.JSONDecodeError as exc:
        # orjson's message carries "line L column C (char N)": keep it verbatim
        # so the client can find the spot.
        raise IntakeError(400, f"the body is not valid JSON: {exc}") from None

    if isinstance(doc, dict):
        if mtype == BATCH_MEDIA_TYPE:
            raise IntakeError(
                400,
                f"{BATCH_MEDIA_TYPE} needs a JSON array of events, got an object: "
                f"wrap it in [ ] or send it as {SINGLE_MEDIA_TYPE}",
            )
        return [doc]
    if isinstance(doc, list):
        if mtype == SINGLE_MEDIA_TYPE:
            raise IntakeError(
                400,
                f"{SINGLE_MEDIA_TYPE} carries exactly one event (a JSON object), got an "
                f"array: send arrays as {BATCH_MEDIA_TYPE}",
            )
        if not doc:
            raise IntakeError(400, "empty batch: the array holds no events; send at least one")
        return doc
    expected = {
        SINGLE_MEDIA_TYPE: "one event (a JSON object)",
        BATCH_MEDIA_TYPE: "a JSON array of events",
    }.get(mtype, "an event (a JSON object) or a JSON array of events")
    raise IntakeError(400, f"the body must be {expected}, got {a_json_type(doc)}")


def json_inside(body: bytes) -> bytes:
    """The encoding of the events in ``body``, which :func:`parse_events` accepted: the inside of its
    array, or the one object (see :class:`collector.events.EncodedEvents`).

    Only JSON whitespace can surround the document (orjson refuses a BOM or anything else).
    """
    doc = body.strip()
    return doc[1:-1] if doc[:1] == b"[" else doc


RAW_MEDIA_TYPES: frozenset[str] = frozenset(
    {JSON_MEDIA_TYPE, "application/x-ndjson", "application/jsonl", "application/jsonlines", "application/json-lines"}
)


def parse_records(body: bytes, content_type: str | None) -> list[Any]:
    """Decode a raw-JSON body (``format: json`` intake) into records.

    ``application/json``: a JSON value; an array gives its elements, anything
    else one record.  If the body is not one JSON value but is valid
    newline-delimited JSON it is read as that.  ``application/x-ndjson`` (and
    ``jsonl``): one JSON value per non-empty line.  Errors name the line.
    """
    mtype = media_type(content_type)
    if mtype not in RAW_MEDIA_TYPES:
        accepted = ", ".join(sorted(RAW_MEDIA_TYPES))
        got = f"Content-Type {quote_value(mtype)} is not supported" if mtype else "the Content-Type header is missing"
        raise IntakeError(415, f"{got}; send JSON records as one of: {accepted}")
    charset = _charset(content_type or "")
    if charset is not None and charset != "utf-8":
        raise IntakeError(415, f"charset {quote_value(charset)} is not supported: send the body as UTF-8")
    if not body.strip():
        raise IntakeError(400, "the request body is empty; send a JSON object, an array, or JSON lines")
    if mtype == JSON_MEDIA_TYPE:
        try:
            doc = load_json(body)
        except orjson.JSONDecodeError as exc:
            if b"\n" not in body.strip():
                raise IntakeError(400, f"the body is not valid JSON: {exc}") from None
        else:
            if isinstance(doc, list):
                if not doc:
                    raise IntakeError(400, "empty batch: the array holds no records; send at least one")
                return doc
            return [doc]
    records = []
    for n, line in enumerate(body.splitlines(), 1):
        if line.strip():
            try:
                records.append(load_json(line))
            except orjson.JSONDecodeError as exc:
                raise IntakeError(400, f"line {n} is not valid JSON: {exc}") from None
    return records


# ---------------------------------------------------------------------------
# Content-Encoding

#: What the receiver decompresses (aiohttp does it while reading the body);
#: anything else is a 415 naming these, not a body that "is not valid JSON".
SUPPORTED_ENCODINGS: tuple[str, ...] = ("gzip", "deflate", "identity")


def check_content_encoding(header: str | None) -> None:
    """Raise a 415 :class:`IntakeError` unless ``header`` names gzip, deflate, identity or nothing."""
    value = (header or "").strip().lower()
    if value in ("", *SUPPORTED_ENCODINGS):
        return
    raise IntakeError(
        415,
        f"Content-Encoding {quote_value(header)} is not supported: send the body uncompressed or with one of "
        f"{', '.join(SUPPORTED_ENCODINGS)} (a single encoding)",
    )


# ---------------------------------------------------------------------------
# RFC 7807 problem documents


#: At most this many entries in a problem's ``invalid`` list; ``invalid_count``
#: gives the total, ``truncated`` says whether entries were left out.  One 4 MB
#: request of invalid fields once produced a 98 MB answer (issue 10).
MAX_REPORTED_ERRORS = 100
_MAX_DETAIL = 1000
_MAX_MESSAGE = 400
_MAX_FIELD = 64
_MAX_ID = 256


def shorten(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters (the last one an ellipsis) when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def collect_errors(
    events: list[Any],
    check: Callable[[Any, int], Iterable[RecordError]],
    *,
    limit: int = MAX_REPORTED_ERRORS,
) -> tuple[list[RecordError], int, int]:
    """Check ``events`` (``check(event, index)`` each) until ``limit`` problems are found.

    Returns the first ``limit`` problems, the number found, and the number of
    events checked: checking stops after the event that reached the limit, so
    a request of hundreds of thousands of invalid fields costs a few
    milliseconds, not a second of the event loop, and never holds them all.
    """
    kept: list[RecordError] = []
    found = 0
    for index, event in enumerate(events):
        errors = check(event, index)
        if not errors:
            continue
        for err in errors:
            found += 1
            if len(kept) < limit:
                kept.append(err)
        if found >= limit:
            return kept, found, index + 1
    return kept, found, len(events)


def problem(
    status: int,
    title: str,
    detail: str,
    errors: list[RecordError] | None = None,
    *,
    events: list[Any] | None = None,
    total: int | None = None,
    unchecked: int = 0,
) -> dict[str, Any]:
    """An RFC 7807 ``application/problem+json`` body, bounded in size whatever the client sent.

    ``type`` is ``about:blank`` (the HTTP status says it all; ``title`` is
    expected to be its reason phrase).  With ``errors``, ``invalid`` lists one
    entry per problem: ``index``, ``field`` (null when the whole event is
    wrong), ``message``, and the event's ``id`` when ``events`` is given and
    that event has a non-empty string id (of at most 256 characters) -- so a
    client can match the entry to its own record even if it reordered the
    batch.  At most :data:`MAX_REPORTED_ERRORS` entries are listed;
    ``invalid_count`` is the number of problems found (``total`` when the
    caller counted more than it passed), ``truncated`` whether some were left
    out, and ``unchecked_events`` (only when not 0) how many events at the end
    were not checked at all once the limit was reached (see
    :func:`collect_errors`).
    Every echoed string is cut short (detail 1000, message 400, field 64
    characters).
    """
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": shorten(detail, _MAX_DETAIL),
    }
    if errors is not None:
        invalid: list[dict[str, Any]] = []
        for err in errors[:MAX_REPORTED_ERRORS]:
            field = err.field if err.field is None else shorten(str(err.field), _MAX_FIELD)
            entry: dict[str, Any] = {"index": err.index, "field": field, "message": shorten(err.message, _MAX_MESSAGE)}
            if events is not None and 0 <= err.index < len(events):
                ev = events[err.index]
                if isinstance(ev, dict):
                    ev_id = ev.get("id")
                    if isinstance(ev_id, str) and ev_id and len(ev_id) <= _MAX_ID:
                        entry["id"] = ev_id
            invalid.append(entry)
        count = max(total if total is not None else 0, len(errors))
        body["invalid"] = invalid
        body["invalid_count"] = count
        body["truncated"] = count > len(invalid) or unchecked > 0
        if unchecked:
            body["unchecked_events"] = unchecked
    return body
