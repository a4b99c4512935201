"""Contract tests for the fake OpenMeter server (tests/support/fake_openmeter.py).

The fake is only useful if it is strict: these tests prove, with plain aiohttp
requests, that it answers like the documented ingest API (success codes, 401,
413, 415, 400 with an RFC 7807 body naming the bad events, 404/405) and that
every fault it can inject behaves as advertised, in-process, in a thread and as
a subprocess.
"""

from __future__ import annotations

import ast
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support.fake_openmeter import (
    DEFAULT_MAX_BODY_BYTES,
    FakeOpenMeter,
    Fault,
    RequestRecord,
)

TOKEN = "secret"
CT_SINGLE = "application/cloudevents+json"
CT_BATCH = "application/cloudevents-batch+json"
CT_JSON = "application/json"
PROBLEM_CT = "application/problem+json"
V1 = "/api/v1/events"
V3 = "/api/v3/openmeter/events"
FAKE_SCRIPT = Path(__file__).resolve().parents[1] / "support" / "fake_openmeter.py"

_DROP = object()  # marks an attribute to remove from the template event


def event(n: int, **overrides: Any) -> dict[str, Any]:
    """A valid OpenMeter CloudEvent; overrides replace (or, with _DROP, remove) keys."""
    ev: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"id-{n}",
        "source": "test-source",
        "type": "request",
        "subject": "customer-1",
        "time": "2024-01-01T00:00:00.001Z",
        "data": {"n": n},
    }
    for key, value in overrides.items():
        if value is _DROP:
            ev.pop(key, None)
        else:
            ev[key] = value
    return ev


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def problem(self) -> dict[str, Any]:
        assert self.headers.get("Content-Type", "").startswith(PROBLEM_CT), self.headers
        doc = json.loads(self.body)
        assert doc["type"] == "about:blank"
        assert doc["status"] == self.status
        assert isinstance(doc["title"], str) and doc["title"]
        assert isinstance(doc["detail"], str) and doc["detail"]
        return doc


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    *,
    content_type: str | None = CT_BATCH,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
    method: str = "POST",
) -> Reply:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    # Large bodies as a stream: aiohttp warns about sending big raw bytes.
    data: bytes | io.BytesIO = io.BytesIO(raw) if len(raw) > 64 * 1024 else raw
    hdrs: dict[str, str] = dict(headers or {})
    if content_type is not None:
        hdrs["Content-Type"] = content_type
    if token is not None:
        hdrs.setdefault("Authorization", f"Bearer {token}")
    # skip_auto_headers: otherwise aiohttp adds application/octet-stream itself.
    async with session.request(method, url, data=data, headers=hdrs, skip_auto_headers={"Content-Type"}) as resp:
        return Reply(resp.status, dict(resp.headers), await resp.read())


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenMeter]:
    server = FakeOpenMeter(token=TOKEN)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
        yield s


# ============================================================================ success paths


async def test_v1_single_event_is_accepted_with_204(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    r = await post(session, fake.url + V1, event(1), content_type=CT_SINGLE)
    assert r.status == 204
    assert r.body == b""
    assert fake.arrivals == [event(1)]
    assert fake.ids() == {("test-source", "id-1")}
    assert fake.requests == [(V1, 204, 1)]
    assert fake.events_url == fake.url + V1
    assert fake.url == f"http://127.0.0.1:{fake.port}"


async def test_v3_batch_is_accepted_with_202(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    r = await post(session, fake.v3_events_url, [event(1), event(2)], content_type=CT_BATCH)
    assert r.status == 202
    assert [e["id"] for e in fake.arrivals] == ["id-1", "id-2"]
    assert fake.requests == [RequestRecord(V3, 202, 2)]
    log = fake.arrival_log
    assert [a.request_no for a in log] == [1, 1]
    assert all(a.path == V3 and abs(a.received_at - time.time()) < 5 for a in log)


@pytest.mark.parametrize("body", [event(1), [event(1), event(2)]], ids=["object", "array"])
async def test_application_json_takes_an_object_or_an_array(
    fake: FakeOpenMeter, session: aiohttp.ClientSession, body: Any
) -> None:
    r = await post(session, fake.events_url, body, content_type=CT_JSON)
    assert r.status == 204
    assert len(fake.arrivals) == (1 if isinstance(body, dict) else 2)


@pytest.mark.parametrize(
    "content_type",
    [
        f"{CT_BATCH}; charset=utf-8",
        f"{CT_BATCH};charset=UTF-8",
        f'{CT_BATCH}; charset="utf-8"',
        "Application/CloudEvents-Batch+JSON",
    ],
)
async def test_utf8_charset_parameter_and_case_are_allowed(
    fake: FakeOpenMeter, session: aiohttp.ClientSession, content_type: str
) -> None:
    r = await post(session, fake.events_url, [event(1)], content_type=content_type)
    assert r.status == 204


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "application/xml",
        "application/octet-stream",
        "application/cloudevents+xml",
        f"{CT_JSON}; charset=latin-1",
        f"{CT_JSON}; boundary=x",
    ],
)
async def test_unsupported_content_type_is_415(
    fake: FakeOpenMeter, session: aiohttp.ClientSession, content_type: str | None
) -> None:
    r = await post(session, fake.events_url, [event(1)], content_type=content_type)
    assert r.status == 415
    r.problem()
    assert fake.arrivals == []
    assert fake.requests == [(V1, 415, 0)]  # undecodable: no events counted


# ============================================================================ auth


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic c2VjcmV0", "secret", "Bearer", "Bearer  "])
async def test_missing_or_wrong_token_is_401(
    fake: FakeOpenMeter, session: aiohttp.ClientSession, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    r = await post(session, fake.events_url, [event(1)], token=None, headers=headers)
    assert r.status == 401
    assert r.headers["WWW-Authenticate"] == "Bearer"
    r.problem()
    assert fake.arrivals == []


async def test_scheme_is_case_insensitive(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    headers = {"Authorization": f"bearer {TOKEN}"}
    r = await post(session, fake.events_url, [event(1)], token=None, headers=headers)
    assert r.status == 204


async def test_without_a_configured_token_no_auth_is_needed(
    session: aiohttp.ClientSession,
) -> None:
    server = FakeOpenMeter()
    await server.start()
    try:
        r = await post(session, server.events_url, [event(1)], token=None)
        assert r.status == 204
    finally:
        await server.stop()


# ============================================================================ body limits & JSON


async def test_body_over_the_configured_limit_is_413(session: aiohttp.ClientSession) -> None:
    limit = 2000
    server = FakeOpenMeter(token=TOKEN, max_body_bytes=limit)
    await server.start()
    try:
        # Pad one event's data so the encoded body is exactly `limit`, then one more byte.
        base = json.dumps([event(1, data={"pad": ""})]).encode()
        fits = [event(1, data={"pad": "x" * (limit - len(base))})]
        assert len(json.dumps(fits).encode()) == limit
        too_big = [event(2, data={"pad": "x" * (limit - len(base) + 1)})]

        assert (await post(session, server.events_url, fits)).status == 204
        r = await post(session, server.events_url, too_big)
        assert r.status == 413
        r.problem()

        # Chunked upload (no Content-Length): the limit is enforced while reading.
        async def chunks() -> AsyncIterator[bytes]:
            payload = json.dumps(too_big).encode()
            for i in range(0, len(payload), 500):
                yield payload[i : i + 500]

        async with session.post(
            server.events_url,
            data=chunks(),
            headers={"Content-Type": CT_BATCH, "Authorization": f"Bearer {TOKEN}"},
        ) as resp:
            assert resp.status == 413
        assert [e["id"] for e in server.arrivals] == ["id-1"]
    finally:
        await server.stop()


async def test_default_limit_is_one_mebibyte(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    assert fake.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 1024 * 1024
    body = [event(1, data={"pad": "x" * DEFAULT_MAX_BODY_BYTES})]
    assert (await post(session, fake.events_url, body)).status == 413


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[1,", b'[{"a": NaN}]', b"[Infinity]", b"\xff\xfe[]", b"nope"],
    ids=["empty", "truncated-object", "truncated-array", "nan", "infinity", "not-utf8", "word"],
)
async def test_invalid_json_is_400(fake: FakeOpenMeter, session: aiohttp.ClientSession, raw: bytes) -> None:
    r = await post(session, fake.events_url, raw, content_type=CT_JSON)
    assert r.status == 400
    assert "JSON" in r.problem()["detail"]
    assert fake.arrivals == []


@pytest.mark.parametrize("content_type", [CT_BATCH, CT_JSON])
async def test_empty_batch_is_400(fake: FakeOpenMeter, session: aiohttp.ClientSession, content_type: str) -> None:
    r = await post(session, fake.events_url, [], content_type=content_type)
    assert r.status == 400
    assert "empty" in r.problem()["detail"]


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        (CT_SINGLE, [event(1)]),  # a batch under the single-event type
        (CT_BATCH, event(1)),  # a single event under the batch type
        (CT_JSON, "just a string"),
        (CT_JSON, 42),
    ],
)
async def test_body_shape_must_match_the_content_type(
    fake: FakeOpenMeter, session: aiohttp.ClientSession, content_type: str, body: Any
) -> None:
    r = await post(session, fake.events_url, body, content_type=content_type)
    assert r.status == 400
    r.problem()
    assert fake.arrivals == []


async def test_non_object_batch_item_is_named(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    r = await post(session, fake.events_url, [event(1), "x", 3])
    assert r.status == 400
    invalid = r.problem()["invalid"]
    assert [(i["index"], i["field"]) for i in invalid] == [(1, None), (2, None)]


# ============================================================================ event rules

BAD_EVENTS: list[tuple[str, dict[str, Any], str]] = [
    ("specversion-missing", {"specversion": _DROP}, "specversion"),
    ("specversion-0.3", {"specversion": "0.3"}, "specversion"),
    ("specversion-number", {"specversion": 1.0}, "specversion"),
    ("id-missing", {"id": _DROP}, "id"),
    ("id-empty", {"id": ""}, "id"),
    ("id-number", {"id": 7}, "id"),
    ("source-missing", {"source": _DROP}, "source"),
    ("source-empty", {"source": ""}, "source"),
    ("type-missing", {"type": _DROP}, "type"),
    ("type-null", {"type": None}, "type"),
    ("subject-missing", {"subject": _DROP}, "subject"),
    ("subject-empty", {"subject": ""}, "subject"),
    ("subject-object", {"subject": {"id": 1}}, "subject"),
    ("time-words", {"time": "yesterday"}, "time"),
    ("time-no-offset", {"time": "2024-01-01T00:00:00"}, "time"),
    ("time-space", {"time": "2024-01-01 00:00:00Z"}, "time"),
    ("time-date-only", {"time": "2024-01-01"}, "time"),
    ("time-bad-month", {"time": "2024-13-01T00:00:00Z"}, "time"),
    ("time-feb-30", {"time": "2024-02-30T00:00:00Z"}, "time"),
    ("time-epoch-number", {"time": 1704067200}, "time"),
    ("time-null", {"time": None}, "time"),
    ("data-string", {"data": "tokens=5"}, "data"),
    ("data-array", {"data": [1, 2]}, "data"),
    ("data-number", {"data": 5}, "data"),
    ("datacontenttype-text", {"datacontenttype": "text/plain"}, "datacontenttype"),
    ("datacontenttype-null", {"datacontenttype": None}, "datacontenttype"),
]


@pytest.mark.parametrize(("overrides", "field"), [(o, f) for _, o, f in BAD_EVENTS], ids=[n for n, _, _ in BAD_EVENTS])
async def test_each_event_rule_rejects_the_whole_request(
    fake: FakeOpenMeter, session: aiohttp.ClientSession, overrides: dict[str, Any], field: str
) -> None:
    bad = event(2, **overrides)
    r = await post(session, fake.v3_events_url, [event(1), bad, event(3)])
    assert r.status == 400
    problem = r.problem()
    assert problem["title"] == "Bad Request"
    expected_id = bad["id"] if isinstance(bad.get("id"), str) and bad["id"] else None
    assert problem["invalid"] == [
        {"index": 1, "id": expected_id, "field": field, "message": problem["invalid"][0]["message"]}
    ]
    assert problem["invalid"][0]["message"]
    # Atomic: the two valid events were not recorded either.
    assert fake.arrivals == []
    assert fake.requests == [(V3, 400, 3)]


@pytest.mark.parametrize(
    "overrides",
    [
        {"time": _DROP},
        {"time": "2024-01-01T00:00:00Z"},
        {"time": "2024-01-01T10:20:30.123456789+05:30"},
        {"time": "2024-01-01t00:00:00z"},
        {"time": "2024-02-29T23:59:59-08:00"},
        {"data": _DROP},
        {"data": None},
        {"data": {}},
        {"datacontenttype": CT_JSON},
        {"dataschema": "https://example.com/schema", "myextension": "x"},
    ],
    ids=lambda o: ",".join(f"{k}={v if v is not _DROP else 'absent'}" for k, v in o.items()),
)
async def test_valid_event_variants_are_accepted(
    fake: FakeOpenMeter, session: aiohttp.ClientSession, overrides: dict[str, Any]
) -> None:
    r = await post(session, fake.events_url, [event(1, **overrides)])
    assert r.status == 204, r.body


async def test_every_bad_event_is_listed(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    batch = [
        event(0),
        event(1, subject=""),
        event(2),
        event(3, time="nope", data=[1]),
        event(4, specversion="0.3"),
    ]
    r = await post(session, fake.events_url, batch)
    assert r.status == 400
    invalid = r.problem()["invalid"]
    assert [(i["index"], i["id"], i["field"]) for i in invalid] == [
        (1, "id-1", "subject"),
        (3, "id-3", "time"),
        (3, "id-3", "data"),
        (4, "id-4", "specversion"),
    ]


# ============================================================================ routing


@pytest.mark.parametrize("path", ["/", "/api/v1/event", "/api/v2/events", "/api/v1/events/x"])
async def test_unknown_path_is_404(fake: FakeOpenMeter, session: aiohttp.ClientSession, path: str) -> None:
    r = await post(session, fake.url + path, [event(1)])
    assert r.status == 404
    r.problem()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", [V1, V3])
async def test_other_methods_are_405(
    fake: FakeOpenMeter, session: aiohttp.ClientSession, method: str, path: str
) -> None:
    r = await post(session, fake.url + path, [event(1)], method=method)
    assert r.status == 405
    assert "POST" in r.headers["Allow"]
    r.problem()
    assert fake.requests == [(path, 405, 0)]


# ============================================================================ recording


async def test_duplicates_are_recorded_in_order_and_counted(
    fake: FakeOpenMeter, session: aiohttp.ClientSession
) -> None:
    await post(session, fake.events_url, [event(1), event(2)])
    await post(session, fake.events_url, [event(2), event(3)])
    await post(session, fake.events_url, [event(2), event(1, source="other")])
    assert [(e["source"], e["id"]) for e in fake.arrivals] == [
        ("test-source", "id-1"),
        ("test-source", "id-2"),
        ("test-source", "id-2"),
        ("test-source", "id-3"),
        ("test-source", "id-2"),
        ("other", "id-1"),
    ]
    assert fake.duplicates() == Counter({("test-source", "id-2"): 3})
    assert len(fake.ids()) == 4
    fake.reset()
    assert fake.arrivals == [] and fake.requests == [] and fake.ids() == set()


async def test_wait_for_ids_accepts_ids_and_pairs_and_times_out(
    fake: FakeOpenMeter, session: aiohttp.ClientSession
) -> None:
    async def later() -> None:
        await asyncio.sleep(0.1)
        await post(session, fake.events_url, [event(1), event(2)])

    task = asyncio.create_task(later())
    await fake.wait_for_ids({"id-1", ("test-source", "id-2")}, timeout=3)
    await task
    with pytest.raises(TimeoutError, match="id-9"):
        await fake.wait_for_ids({"id-1", "id-9"}, timeout=0.1)
    with pytest.raises(TimeoutError):
        await fake.wait_for_ids({("other-source", "id-1")}, timeout=0.05)


# ============================================================================ faults


async def test_fail_next_500_for_n_requests(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    fake.fail_next(500, count=3)
    statuses = [(await post(session, fake.events_url, [event(1)])).status for _ in range(4)]
    assert statuses == [500, 500, 500, 204]
    assert fake.requests == [(V1, 500, 1)] * 3 + [(V1, 204, 1)]
    assert len(fake.arrivals) == 1


async def test_fail_next_503_carries_retry_after_seconds(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    fake.fail_next(503, count=2, retry_after=1)
    fake.fail_next(503, retry_after=0.2)  # HTTP wants integers: rounded up
    fake.fail_next(503, retry_after="garbage")  # verbatim, to test client parsing
    fake.fail_next(503)  # no header at all
    replies = [await post(session, fake.events_url, [event(1)]) for _ in range(5)]
    assert [r.status for r in replies] == [503, 503, 503, 503, 503]
    assert [r.headers.get("Retry-After") for r in replies] == ["1", "1", "1", "garbage", None]
    assert replies[0].problem()["title"] == "Service Unavailable"
    assert fake.arrivals == []


async def test_fail_next_429_with_http_date_retry_after(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    fake.fail_next(429, count=1, retry_after=2, retry_after_date=True)
    before = time.time()
    r = await post(session, fake.events_url, [event(1)])
    assert r.status == 429
    when = parsedate_to_datetime(r.headers["Retry-After"]).timestamp()
    assert before + 2 <= when <= before + 4
    assert r.headers["Retry-After"].endswith("GMT")
    assert (await post(session, fake.events_url, [event(1)])).status == 204


async def test_commit_fault_records_then_loses_the_ack(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    fake.fail_next(500, commit=True)
    assert (await post(session, fake.events_url, [event(1)])).status == 500
    assert (await post(session, fake.events_url, [event(1)])).status == 204  # the retry
    assert fake.duplicates() == Counter({("test-source", "id-1"): 2})


async def test_unauthorized_for_a_period_then_recovers(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    fake.unauthorized_for(0.3)
    r = await post(session, fake.events_url, [event(1)])  # right token, still 401
    assert r.status == 401
    r.problem()
    await asyncio.sleep(0.35)
    assert (await post(session, fake.events_url, [event(1)])).status == 204


async def test_unauthorized_until_cleared(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    fake.unauthorized_for(None)
    assert (await post(session, fake.events_url, [event(1)])).status == 401
    assert (await post(session, fake.events_url, [event(1)])).status == 401
    fake.clear_faults()
    assert (await post(session, fake.events_url, [event(1)])).status == 204


async def test_reject_ids_poisons_the_whole_request(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    fake.reject_ids({"id-7", "id-9"})
    r = await post(session, fake.events_url, [event(6), event(7), event(8), event(9)])
    assert r.status == 400
    invalid = r.problem()["invalid"]
    assert [(i["index"], i["id"], i["field"]) for i in invalid] == [
        (1, "id-7", "id"),
        (3, "id-9", "id"),
    ]
    assert fake.arrivals == []
    # A batch without the poisoned ids still goes through; clearing lifts the rule.
    assert (await post(session, fake.events_url, [event(6), event(8)])).status == 204
    fake.reject_ids(set())
    assert (await post(session, fake.events_url, [event(7)])).status == 204
    assert fake.ids() == {("test-source", f"id-{n}") for n in (6, 7, 8)}


async def test_stall_outlasts_the_client_timeout_then_records(
    fake: FakeOpenMeter, session: aiohttp.ClientSession
) -> None:
    fake.stall_next(0.6, count=1)
    started = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        async with session.post(
            fake.events_url,
            json=[event(1)],
            headers={"Content-Type": CT_BATCH, "Authorization": f"Bearer {TOKEN}"},
            timeout=aiohttp.ClientTimeout(total=0.2),
        ):
            pass
    assert time.monotonic() - started < 0.5
    assert fake.arrivals == []  # still stalled
    # The slow server commits anyway: the classic source of duplicates on retry.
    await fake.wait_for_ids({"id-1"}, timeout=3)
    assert fake.requests == [(V1, 204, 1)]
    # Only the next request was stalled.
    started = time.monotonic()
    assert (await post(session, fake.events_url, [event(2)])).status == 204
    assert time.monotonic() - started < 0.3


async def test_stall_then_status_records_nothing(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    fake.stall_next(0.2, count=2, then_status=504)
    started = time.monotonic()
    assert (await post(session, fake.events_url, [event(1)])).status == 504
    assert (await post(session, fake.events_url, [event(1)])).status == 504
    assert time.monotonic() - started >= 0.4
    assert fake.arrivals == []


async def test_queue_faults_plays_a_script_in_order(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    fake.queue_faults(
        [
            Fault(status=500),
            Fault(status=429, retry_after=3),
            Fault(delay=0.1),  # slow but fine
            Fault(status=418, detail="teapot", headers={"X-Why": "test"}),
        ]
    )
    assert fake.pending_faults() == 4
    replies = [await post(session, fake.events_url, [event(n)]) for n in range(5)]
    assert [r.status for r in replies] == [500, 429, 204, 418, 204]
    assert replies[1].headers["Retry-After"] == "3"
    assert replies[3].headers["X-Why"] == "test"
    assert replies[3].problem()["detail"] == "teapot"
    assert [e["id"] for e in fake.arrivals] == ["id-2", "id-4"]
    assert fake.pending_faults() == 0


async def test_faults_do_not_bypass_the_contract(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    # A stall that then processes, and a commit fault, still enforce auth.
    fake.stall_next(0.01)
    fake.fail_next(500, commit=True)
    assert (await post(session, fake.events_url, [event(1)], token="wrong")).status == 401
    assert (await post(session, fake.events_url, [event(1)], token="wrong")).status == 401
    assert fake.arrivals == []


def test_fault_arguments_are_checked() -> None:
    fake = FakeOpenMeter()
    with pytest.raises(ValueError):
        fake.fail_next(500, count=0)
    with pytest.raises(ValueError):
        fake.fail_next(1000)
    with pytest.raises(ValueError):
        Fault(commit=True)
    with pytest.raises(ValueError):
        Fault(delay=-1)
    with pytest.raises(RuntimeError):
        _ = fake.url  # not started


async def test_pause_listening_refuses_connections_then_resumes_on_the_same_port(
    fake: FakeOpenMeter,
) -> None:
    port = fake.port
    # force_close: every request opens a new connection, so "refused" is what we see.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=2)) as s:
        assert (await post(s, fake.events_url, [event(1)])).status == 204
        await fake.pause_listening(0.4)
        assert not fake.listening
        with pytest.raises(aiohttp.ClientConnectorError):
            await post(s, fake.events_url, [event(2)])
        deadline = time.monotonic() + 3
        while not fake.listening and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert fake.port == port
        assert (await post(s, fake.events_url, [event(3)])).status == 204

        # Until resumed explicitly.
        await fake.pause_listening(None)
        await asyncio.sleep(0.2)
        with pytest.raises(aiohttp.ClientConnectorError):
            await post(s, fake.events_url, [event(4)])
        await fake.resume_listening()
        assert (await post(s, fake.events_url, [event(5)])).status == 204
    assert [e["id"] for e in fake.arrivals] == ["id-1", "id-3", "id-5"]


async def test_pause_closes_kept_alive_connections(fake: FakeOpenMeter, session: aiohttp.ClientSession) -> None:
    assert (await post(session, fake.events_url, [event(1)])).status == 204
    await fake.pause_listening(None)
    # The pooled connection was closed by the server: no request gets through.
    with pytest.raises(aiohttp.ClientError):
        await post(session, fake.events_url, [event(2)])
    await fake.resume_listening()
    assert fake.ids() == {("test-source", "id-1")}


async def test_stop_and_start_keep_the_port_and_the_records(
    session: aiohttp.ClientSession,
) -> None:
    server = FakeOpenMeter(token=TOKEN)
    await server.start()
    try:
        port = server.port
        assert (await post(session, server.events_url, [event(1)])).status == 204
        await server.stop()
        await server.start()
        assert server.port == port
        assert (await post(session, server.events_url, [event(2)])).status == 204
        assert [e["id"] for e in server.arrivals] == ["id-1", "id-2"]
    finally:
        await server.stop()


async def test_record_file_in_process(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    record = tmp_path / "arrivals.jsonl"
    server = FakeOpenMeter(record_path=record)
    await server.start()
    try:
        await post(session, server.events_url, [event(1), event(2)], token=None)
        await post(session, server.events_url, [event(3, id="")], token=None)  # 400
        lines = record.read_text().splitlines()
        assert [json.loads(line) for line in lines] == [event(1), event(2)]
    finally:
        await server.stop()


# ============================================================================ control API


async def test_control_api_injects_faults_and_reports_state(
    fake: FakeOpenMeter, session: aiohttp.ClientSession
) -> None:
    actions = [
        {"action": "fail_next", "status": 503, "count": 1, "retry_after": 2},
        {"action": "queue_faults", "faults": [{"status": 500, "commit": True}]},
        {"action": "stall_next", "seconds": 0.05},
        {"action": "reject_ids", "ids": ["id-9"]},
    ]
    async with session.post(fake.url + "/_control/faults", json=actions) as resp:
        assert resp.status == 200
        assert (await resp.json())["pending_faults"] == 3

    r1 = await post(session, fake.events_url, [event(1)])
    assert (r1.status, r1.headers["Retry-After"]) == (503, "2")
    assert (await post(session, fake.events_url, [event(1)])).status == 500  # committed
    assert (await post(session, fake.events_url, [event(1)])).status == 204  # stalled, ok
    assert (await post(session, fake.events_url, [event(9)])).status == 400

    async with session.post(
        fake.url + "/_control/faults", json={"action": "unauthorized_for", "seconds": None}
    ) as resp:
        assert resp.status == 200
    assert (await post(session, fake.events_url, [event(2)])).status == 401
    async with session.post(fake.url + "/_control/faults", json={"action": "clear"}) as resp:
        assert resp.status == 200
    assert (await post(session, fake.events_url, [event(9)])).status == 204

    async with session.get(fake.url + "/_control/state") as resp:
        state = await resp.json()
    assert state["port"] == fake.port
    assert state["arrivals"] == 3
    assert state["duplicates"] == [["test-source", "id-1", 2]]
    assert state["ids"] == [["test-source", "id-1"], ["test-source", "id-9"]]
    assert [tuple(r) for r in state["requests"]] == fake.requests
    # Control requests are neither logged nor subject to faults/auth.
    assert all(not r.path.startswith("/_control") for r in fake.requests)

    async with session.post(fake.url + "/_control/reset") as resp:
        assert (await resp.json())["arrivals"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"action": "explode"},
        {"no": "action"},
        {"action": "fail_next", "status": 503, "bogus": 1},
        {"action": "queue_faults", "faults": [{"status": 500, "nope": True}]},
        ["not an object"],
    ],
)
async def test_control_api_rejects_bad_actions(fake: FakeOpenMeter, session: aiohttp.ClientSession, body: Any) -> None:
    async with session.post(fake.url + "/_control/faults", json=body) as resp:
        assert resp.status == 400
        assert resp.content_type == PROBLEM_CT


async def test_control_can_be_disabled(session: aiohttp.ClientSession) -> None:
    server = FakeOpenMeter(control=False)
    await server.start()
    try:
        async with session.get(server.url + "/_control/state") as resp:
            assert resp.status == 404
    finally:
        await server.stop()


# ============================================================================ thread mode


def _urllib_post(url: str, events: list[dict[str, Any]], token: str = TOKEN) -> int:
    req = urllib.request.Request(
        url,
        data=json.dumps(events).encode(),
        headers={"Content-Type": CT_BATCH, "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=3) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_in_thread_mode_serves_sync_callers() -> None:
    with FakeOpenMeter.in_thread(token=TOKEN) as fake:
        assert _urllib_post(fake.events_url, [event(1)]) == 204
        assert _urllib_post(fake.events_url, [event(1)], token="bad") == 401
        fake.fail_next(503, retry_after=1)
        assert _urllib_post(fake.events_url, [event(2)]) == 503
        assert _urllib_post(fake.events_url, [event(2)]) == 204
        fake.wait_for_ids_sync({"id-1", "id-2"}, timeout=2)
        with pytest.raises(TimeoutError):
            fake.wait_for_ids_sync({"id-3"}, timeout=0.05)

        fake.pause_listening_sync(None)
        with pytest.raises(urllib.error.URLError):
            _urllib_post(fake.events_url, [event(3)])
        fake.resume_listening_sync()
        assert _urllib_post(fake.events_url, [event(3)]) == 204
        assert fake.requests[-1] == (V1, 204, 1)
    assert not fake.listening


async def test_in_thread_mode_from_an_async_test(session: aiohttp.ClientSession) -> None:
    # The fake's loop is not the test's loop: lifecycle calls are forwarded.
    with FakeOpenMeter.in_thread() as fake:
        assert (await post(session, fake.events_url, [event(1)], token=None)).status == 204
        await fake.wait_for_ids({"id-1"}, timeout=2)
        await fake.pause_listening(0.2)
        assert not fake.listening
        deadline = time.monotonic() + 3
        while not fake.listening and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert fake.listening


# ============================================================================ subprocess mode


@pytest.fixture
def fake_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    record = tmp_path / "arrivals.jsonl"
    port_file = tmp_path / "port.txt"
    stderr = (tmp_path / "stderr.txt").open("wb")
    proc = subprocess.Popen(
        [sys.executable, str(FAKE_SCRIPT), "--port", "0", "--record", str(record),
         "--port-file", str(port_file), "--token", TOKEN],
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists():
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "fake did not write its port file"
            time.sleep(0.02)
        yield proc, int(port_file.read_text()), record
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        stderr.close()


async def test_subprocess_mode_records_to_a_file_and_takes_faults_over_http(
    fake_process: tuple[subprocess.Popen[bytes], int, Path], session: aiohttp.ClientSession
) -> None:
    proc, port, record = fake_process
    url = f"http://127.0.0.1:{port}"
    assert (await post(session, url + V1, [event(1), event(2)])).status == 204
    assert (await post(session, url + V3, event(3), content_type=CT_SINGLE)).status == 202
    assert (await post(session, url + V1, [event(4, subject="")])).status == 400
    assert (await post(session, url + V1, [event(5)], token="wrong")).status == 401

    async with session.post(
        url + "/_control/faults",
        json=[
            {"action": "fail_next", "status": 503, "retry_after": 1},
            {"action": "fail_next", "status": 500, "commit": True},
        ],
    ) as resp:
        assert resp.status == 200
    r = await post(session, url + V1, [event(5)])
    assert (r.status, r.headers["Retry-After"]) == (503, "1")
    assert (await post(session, url + V1, [event(5)])).status == 500  # committed
    assert (await post(session, url + V1, [event(5)])).status == 204

    # Flushed per request: readable while the process still runs.
    ids = [json.loads(line)["id"] for line in record.read_text().splitlines()]
    assert ids == ["id-1", "id-2", "id-3", "id-5", "id-5"]
    async with session.get(url + "/_control/state") as resp:
        state = await resp.json()
    assert state["duplicates"] == [["test-source", "id-5", 2]]

    # Refused connections on demand, then back on the same port.
    async with session.post(url + "/_control/faults", json={"action": "pause_listening", "seconds": 0.4}) as resp:
        assert resp.status == 200
    await asyncio.sleep(0.2)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True), timeout=aiohttp.ClientTimeout(total=2)
    ) as fresh:
        with pytest.raises(aiohttp.ClientConnectorError):
            await post(fresh, url + V1, [event(6)])
        deadline = time.monotonic() + 3
        while True:
            try:
                assert (await post(fresh, url + V1, [event(6)])).status == 204
                break
            except aiohttp.ClientConnectorError:
                assert time.monotonic() < deadline, "fake did not listen again"
                await asyncio.sleep(0.05)

    os.kill(proc.pid, signal.SIGTERM)  # graceful stop, by PID
    assert await asyncio.to_thread(proc.wait, 5) == 0
    ids = [json.loads(line)["id"] for line in record.read_text().splitlines()]
    assert ids[-1] == "id-6"


# ============================================================================ independence


def test_fake_does_not_import_the_collector() -> None:
    tree = ast.parse(FAKE_SCRIPT.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "collector" not in imported
    assert imported <= set(sys.stdlib_module_names) | {"aiohttp", "__future__"}
