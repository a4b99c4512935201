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

from http import HTTPStatus
from typing import Any

import orjson

from collector.errors import CollectorError, RecordError
from collector.events import a_json_type

SINGLE_MEDIA_TYPE = "application/cloudevents+json"
BATCH_MEDIA_TYPE = "application/cloudevents-batch+json"
JSON_MEDIA_TYPE = "application/json"
ACCEPTED_MEDIA_TYPES: frozenset[str] = frozenset({SINGLE_MEDIA_TYPE, BATCH_MEDIA_TYPE, JSON_MEDIA_TYPE})

# Spelled out once so that every 415 tells the client the same thing.
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
        raise IntakeError(415, f"Content-Type {mtype!r} is not supported; send {_ACCEPTED_HINT}")
    assert content_type is not None  # media_type() returned non-empty
    charset = _charset(content_type)
    if charset is not None and charset != "utf-8":
        raise IntakeError(
            415,
            f"charset {charset!r} is not supported: send the body as UTF-8 (charset=utf-8, or no charset parameter)",
        )

    if not body:
        raise IntakeError(400, "the request body is empty; send a CloudEvent or an array of them")
    try:
        doc = orjson.loads(body)
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
        got = f"Content-Type {mtype!r} is not supported" if mtype else "the Content-Type header is missing"
        raise IntakeError(415, f"{got}; send JSON records as one of: {accepted}")
    charset = _charset(content_type or "")
    if charset is not None and charset != "utf-8":
        raise IntakeError(415, f"charset {charset!r} is not supported: send the body as UTF-8")
    if not body.strip():
        raise IntakeError(400, "the request body is empty; send a JSON object, an array, or JSON lines")
    if mtype == JSON_MEDIA_TYPE:
        try:
            doc = orjson.loads(body)
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
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise IntakeError(400, f"line {n} is not valid JSON: {exc}") from None
    return records


# ---------------------------------------------------------------------------
# RFC 7807 problem documents


def problem(
    status: int,
    title: str,
    detail: str,
    errors: list[RecordError] | None = None,
    *,
    events: list[Any] | None = None,
) -> dict[str, Any]:
    """An RFC 7807 ``application/problem+json`` body.

    ``type`` is ``about:blank`` (the HTTP status says it all; ``title`` is
    expected to be its reason phrase).  With ``errors``, ``invalid`` lists one
    entry per problem: ``index``, ``field`` (null when the whole event is
    wrong), ``message``, and the event's ``id`` when ``events`` is given and
    that event has a non-empty string id -- so a client can match the entry
    to its own record even if it reordered the batch.
    """
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        invalid: list[dict[str, Any]] = []
        for err in errors:
            entry: dict[str, Any] = {"index": err.index, "field": err.field, "message": err.message}
            if events is not None and 0 <= err.index < len(events):
                ev = events[err.index]
                if isinstance(ev, dict):
                    ev_id = ev.get("id")
                    if isinstance(ev_id, str) and ev_id:
                        entry["id"] = ev_id
            invalid.append(entry)
        body["invalid"] = invalid
    return body
