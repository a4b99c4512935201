"""The built-in ``http`` receiver, served for real on 127.0.0.1 and called with real clients.

Every test starts a service from a YAML snippet (``run_pipeline``) with the
receiver on port 0, sends requests with aiohttp (or a raw socket where a client
library would hide the behaviour under test) and checks what the client is told
*and* what reached the exporter queue: an acknowledgement must mean "committed",
a refusal must mean "nothing of it was queued".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import http.client
import logging
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.errors import ConfigError
from collector.events import stable_id
from collector.testing import eventually, service_in_thread
from collector.testing.harness import RunningPipeline

V1 = "/api/v1/events"
V3 = "/api/v3/openmeter/events"
SINGLE = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = "application/json"
PROBLEM = "application/problem+json"
FAST_RETRY = "retry: {initial_interval: 0.01, max_interval: 0.1, auth_interval: 0.1}"


def ev(i: int | str, **extra: Any) -> dict[str, Any]:
    event = {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": "test",
        "type": "api-call",
        "subject": "cust-1",
        "time": "2024-05-01T12:00:00Z",
        "data": {"n": 1},
    }
    event.update(extra)
    return {k: v for k, v in event.items() if v is not _DROP}


_DROP = object()  # ev(1, time=_DROP) leaves the attribute out


def config(receiver: str = "", exporter: str = "") -> str:
    receiver = ", " + receiver if receiver else ""
    exporter = ", " + exporter if exporter else ""
    return (
        f"receivers: {{http: {{endpoint: '127.0.0.1:0'{receiver}}}}}\n"
        f"exporters: {{memory: {{batch: {{period: 0.01}}, {FAST_RETRY}{exporter}}}}}\n"
    )


@contextlib.asynccontextmanager
async def serving(run_pipeline, yaml_text: str, **kwargs: Any) -> AsyncIterator[tuple[RunningPipeline, str]]:
    async with run_pipeline(yaml_text, **kwargs) as p:
        port = p.service.receivers["http"].port
        assert port, "the receiver did not report its bound port"
        yield p, f"http://127.0.0.1:{port}"


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: Any,
    content_type: str | None = JSON,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = dict(headers or {})
    skip = []
    if content_type is None:
        skip.append("Content-Type")
    else:
        hdrs["Content-Type"] = content_type
    async with session.post(url, data=data, headers=hdrs, skip_auto_headers=skip) as resp:
        return resp.status, dict(resp.headers), await resp.read()


def queued(p: RunningPipeline, exporter: str = "memory") -> int:
    return p.service.exporters[exporter].queue.stats().events


async def until(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    await eventually(predicate, timeout=timeout, message=what)


async def only_sentinel_arrives(p: RunningPipeline, session: aiohttp.ClientSession, base: str) -> None:
    """Prove that nothing of earlier refused requests was queued.

    The queue is FIFO, so once a later, valid sentinel event has been exported,
    anything committed before it would have been exported too.
    """
    status, _, _ = await post(session, base + V1, ev("sentinel"))
    assert status == 204
    await p.exporter().wait_for(1)
    await asyncio.sleep(0.05)
    assert [e["id"] for e in p.exporter().events] == ["esentinel"]


# ---------------------------------------------------------------------------
# Success paths and the commit-before-acknowledge contract


@pytest.mark.parametrize(("path", "expected"), [(V1, 204), (V3, 202)])
async def test_success_is_answered_only_after_the_commit(collector_run_pipeline, path, expected):
    async with serving(collector_run_pipeline, config(exporter="batch: {period: 60}")) as (p, base):
        runner = p.service.exporters["memory"]
        committed = asyncio.Event()
        original = runner.queue.put

        async def slow_put(events):
            await asyncio.sleep(0.2)
            await original(events)
            committed.set()

        runner.queue.put = slow_put  # type: ignore[method-assign]
        async with aiohttp.ClientSession() as s:
            status, _, body = await post(s, base + path, [ev(1), ev(2)], BATCH)
        assert status == expected
        assert body == b""
        assert committed.is_set(), "the receiver acknowledged before the queue committed"
        assert queued(p) == 2


async def test_acknowledged_events_are_durably_queued_then_exported(collector_run_pipeline, tmp_path):
    out = tmp_path / "events.jsonl"
    yaml_text = (
        "receivers: {http: {endpoint: '127.0.0.1:0'}}\n"
        f"exporters: {{debug: {{path: '{out}', batch: {{period: 0.01}}, queue: {{kind: durable}}}}}}\n"
    )
    async with serving(collector_run_pipeline, yaml_text) as (p, base):
        runner = p.service.exporters["debug"]
        # hold the sender back: what the 204 promises must already be in the durable queue
        original_export = runner.exporter.export
        gate = asyncio.Event()

        async def held_export(events):
            while not gate.is_set():
                await asyncio.sleep(0.01)
            await original_export(events)

        runner.exporter.export = held_export  # type: ignore[method-assign]
        async with aiohttp.ClientSession() as s:
            assert (await post(s, base + V1, [ev(1), ev(2)]))[0] == 204
            assert (await post(s, base + V3, ev(3), SINGLE))[0] == 202
        assert runner.queue.stats().events == 3
        assert runner.queue.stats().bytes > 0
        gate.set()

        def exported() -> set[str]:
            if not out.exists():
                return set()
            return {orjson.loads(line)["id"] for line in out.read_bytes().splitlines() if line}

        await until(lambda: exported() == {"e1", "e2", "e3"}, what="events in the debug file")
        await until(lambda: runner.queue.stats().items == 0, what="queue drained")


CONTENT_TYPES = [
    (SINGLE, "one"),
    (f"{SINGLE}; charset=utf-8", "one"),
    (BATCH, "many"),
    (f"{BATCH}; charset=utf-8", "many"),
    (JSON, "one"),
    (JSON, "many"),
    (f"{JSON}; charset=utf-8", "one"),
    (f"{JSON};charset=UTF-8", "many"),
    ('Application/JSON; Charset="utf-8"', "many"),
]


async def test_every_openmeter_content_type_is_accepted(collector_run_pipeline):
    async with serving(collector_run_pipeline, config()) as (p, base):
        expected: set[str] = set()
        async with aiohttp.ClientSession() as s:
            for n, (ctype, shape) in enumerate(CONTENT_TYPES):
                body: Any = ev(f"{n}a") if shape == "one" else [ev(f"{n}a"), ev(f"{n}b")]
                expected |= {e["id"] for e in (body if isinstance(body, list) else [body])}
                status, _, text = await post(s, base + V1, body, ctype)
                assert status == 204, (ctype, text)
        events = await p.exporter().wait_for(len(expected))
        assert {e["id"] for e in events} == expected


@pytest.mark.parametrize(
    "ctype",
    [
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        "application/json; charset=latin-1",
        "application/cloudevents+json; charset=utf-16",
        None,
    ],
)
async def test_other_content_types_get_415(collector_run_pipeline, ctype):
    async with serving(collector_run_pipeline, config()) as (p, base), aiohttp.ClientSession() as s:
        status, headers, body = await post(s, base + V1, [ev(1)], ctype)
        assert status == 415
        assert headers["Content-Type"].startswith(PROBLEM)
        problem = orjson.loads(body)
        assert problem["status"] == 415
        if ctype and "charset" in ctype:
            assert "UTF-8" in problem["detail"]
        else:
            assert JSON in problem["detail"] and BATCH in problem["detail"]
        assert queued(p) == 0
        await only_sentinel_arrives(p, s, base)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", [V1, V3])
async def test_other_methods_get_405_with_allow(collector_run_pipeline, method, path):
    async with serving(collector_run_pipeline, config()) as (p, base), aiohttp.ClientSession() as s:
        async with s.request(method, base + path, data=orjson.dumps(ev(1)), headers={"Content-Type": JSON}) as r:
            assert r.status == 405
            assert r.headers["Allow"] == "POST"
            assert r.headers["Content-Type"].startswith(PROBLEM)
            assert orjson.loads(await r.read())["status"] == 405
        assert queued(p) == 0


@pytest.mark.parametrize("path", ["/", "/api/v1/event", "/api/v1/events/", "/api/v2/events", "/api/v3/events"])
async def test_unknown_paths_get_404(collector_run_pipeline, path):
    async with serving(collector_run_pipeline, config()) as (p, base), aiohttp.ClientSession() as s:
        status, headers, body = await post(s, base + path, ev(1))
        assert status == 404
        assert headers["Content-Type"].startswith(PROBLEM)
        assert V1 in orjson.loads(body)["detail"]
        async with s.get(base + path) as r:
            assert r.status == 404
        assert queued(p) == 0


# ---------------------------------------------------------------------------
# 400: what is wrong, and where


BAD_REQUESTS = [
    # (id, body bytes, content type, expected (index, field) entries or None, detail fragment)
    ("malformed-json", b'[{"id": "e1", "source": ', JSON, None, "not valid JSON"),
    ("empty-body", b"", JSON, None, "empty"),
    ("empty-array", b"[]", JSON, None, "empty batch"),
    ("empty-batch", b"[]", BATCH, None, "empty batch"),
    ("batch-type-with-object", orjson.dumps(ev(1)), BATCH, None, "array"),
    ("single-type-with-array", orjson.dumps([ev(1)]), SINGLE, None, "exactly one"),
    ("scalar-body", b"42", JSON, None, "got a number"),
    ("missing-source", orjson.dumps([ev(1), ev(2, source=_DROP)]), BATCH, [(1, "source")], "event 1"),
    ("no-subject-nor-type", orjson.dumps(ev(1, subject=_DROP, type=_DROP)), SINGLE, [(0, "type"), (0, "subject")], ""),
    ("wrong-type-subject", orjson.dumps([ev(1), ev(2), ev(3, subject=7)]), JSON, [(2, "subject")], "event 2"),
    ("wrong-type-id", orjson.dumps([ev(1, id=True)]), JSON, [(0, "id")], "field 'id'"),
    ("empty-string-id", orjson.dumps([ev(1, id="")]), JSON, [(0, "id")], ""),
    ("time-not-rfc3339", orjson.dumps([ev(1, time="yesterday")]), JSON, [(0, "time")], ""),
    ("time-as-number", orjson.dumps([ev(1, time=1714564800)]), JSON, [(0, "time")], ""),
    ("data-not-object", orjson.dumps([ev(1), ev(2, data=[1, 2])]), JSON, [(1, "data")], ""),
    ("wrong-specversion", orjson.dumps([ev(1, specversion="0.3")]), JSON, [(0, "specversion")], ""),
    ("non-object-element", orjson.dumps([ev(1), "not an event"]), JSON, [(1, None)], "event 1"),
    ("bad-datacontenttype", orjson.dumps([ev(1, datacontenttype="text/xml")]), JSON, [(0, "datacontenttype")], ""),
]


@pytest.mark.parametrize(
    ("body", "ctype", "expected", "fragment"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
async def test_bad_requests_get_400_problem_naming_index_and_field(
    collector_run_pipeline, body, ctype, expected, fragment
):
    async with serving(collector_run_pipeline, config()) as (p, base), aiohttp.ClientSession() as s:
        status, headers, raw = await post(s, base + V1, body, ctype)
        assert status == 400, raw
        assert headers["Content-Type"].startswith(PROBLEM)
        problem = orjson.loads(raw)
        assert problem["status"] == 400 and problem["title"] == "Bad Request" and problem["type"] == "about:blank"
        assert fragment in problem["detail"]
        if expected is not None:
            assert [(i["index"], i["field"]) for i in problem["invalid"]] == expected
            assert all(i["message"] for i in problem["invalid"])
            sent = orjson.loads(body)
            events = sent if isinstance(sent, list) else [sent]
            for item in problem["invalid"]:  # the entry names the client's own id when it has one
                own = events[item["index"]]
                if isinstance(own, dict) and isinstance(own.get("id"), str) and own["id"]:
                    assert item["id"] == own["id"]
        assert queued(p) == 0
        await only_sentinel_arrives(p, s, base)


async def test_a_broken_content_encoding_is_400_not_500(collector_run_pipeline):
    async with serving(collector_run_pipeline, config()) as (p, base), aiohttp.ClientSession() as s:
        status, headers, raw = await post(s, base + V1, b"this is not gzip", JSON, {"Content-Encoding": "gzip"})
        assert status == 400
        assert headers["Content-Type"].startswith(PROBLEM)
        assert "could not be read" in orjson.loads(raw)["detail"]
        await only_sentinel_arrives(p, s, base)


# ---------------------------------------------------------------------------
# Authentication


def _auth_setup(kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(receiver YAML fragment, a valid token) for each way of configuring tokens."""
    good = "s3cr3t-token-for-ingest-9f2c"
    if kind == "inline":
        return f"auth: {{tokens: ['{good}', 'other-token-1234', '']}}", good
    if kind == "file":
        path = tmp_path / "tokens.txt"
        path.write_text(f"# ingest tokens\n\nother-token-1234\n  {good}  \n", encoding="utf-8")
        return f"auth: {{tokens_file: '{path}'}}", good
    monkeypatch.setenv("COLLECTOR_TEST_INGEST_TOKENS", f"other-token-1234, {good}")
    return "auth: {tokens_env: COLLECTOR_TEST_INGEST_TOKENS}", good


@pytest.mark.parametrize("kind", ["inline", "file", "env"])
async def test_bearer_tokens_are_required_and_never_logged(collector_run_pipeline, tmp_path, monkeypatch, caplog, kind):
    monkeypatch.setattr(logging.getLogger("collector"), "propagate", True)
    caplog.set_level(logging.DEBUG)
    fragment, good = _auth_setup(kind, tmp_path, monkeypatch)
    wrong = "wrong-token-0b7d1e"
    async with serving(collector_run_pipeline, config(receiver=fragment)) as (p, base), aiohttp.ClientSession() as s:
        for headers in (
            {},
            {"Authorization": f"Bearer {wrong}"},
            {"Authorization": f"bearer{good}"},
            {"Authorization": f"Basic {good}"},
            {"Authorization": good},
            {"Authorization": f"Bearer {good}x"},
        ):
            status, resp_headers, raw = await post(s, base + V1, [ev(1)], headers=headers)
            assert status == 401, headers
            assert resp_headers["WWW-Authenticate"].startswith("Bearer")
            assert resp_headers["Content-Type"].startswith(PROBLEM)
            assert good.encode() not in raw and wrong.encode() not in raw
        assert queued(p) == 0
        ok = {"Authorization": f"Bearer {good}"}
        assert (await post(s, base + V1, [ev(2)], headers=ok))[0] == 204
        assert (await post(s, base + V3, [ev(3)], headers=ok))[0] == 202
        other = {"Authorization": "Bearer other-token-1234"}
        assert (await post(s, base + V1, [ev(4)], headers=other))[0] == 204
        events = await p.exporter().wait_for(3)
        assert {e["id"] for e in events} == {"e2", "e3", "e4"}
    assert "http receiver listening" in caplog.text, "the log capture saw nothing; the check below would be vacuous"
    for record in caplog.records:
        text = record.getMessage() + repr(vars(record))
        assert good not in text and wrong not in text, f"a token was logged: {record.getMessage()!r}"


async def test_a_non_utf8_authorization_header_is_401_not_500(collector_run_pipeline):
    async with serving(collector_run_pipeline, config(receiver="auth: {tokens: [tok-1234]}")) as (p, _):
        head = (
            b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Authorization: Bearer \xff\xfe\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        )
        status_line, _ = await raw_exchange(p.service.receivers["http"].port, head)
        assert status_line == b"HTTP/1.1 401 Unauthorized"


async def test_auth_configured_but_empty_is_a_config_error(collector_run_pipeline, tmp_path, monkeypatch):
    empty = tmp_path / "tokens.txt"
    empty.write_text("# nothing here\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="auth"):
        async with collector_run_pipeline(config(receiver=f"auth: {{tokens_file: '{empty}'}}")):
            pass
    monkeypatch.delenv("COLLECTOR_TEST_UNSET_TOKENS", raising=False)
    with pytest.raises(ConfigError, match="COLLECTOR_TEST_UNSET_TOKENS"):
        async with collector_run_pipeline(config(receiver="auth: {tokens_env: COLLECTOR_TEST_UNSET_TOKENS}")):
            pass


# ---------------------------------------------------------------------------
# Limits: 413, 408


async def raw_exchange(port: int, data: bytes, *, read_timeout: float = 5.0) -> tuple[bytes, bytes]:
    """Send raw bytes, read until the server closes (or a full response); (status line, whole answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(65536), read_timeout)
    finally:
        writer.close()
    return answer.split(b"\r\n", 1)[0], answer


async def test_bodies_over_max_body_bytes_get_413(collector_run_pipeline):
    limit = 1000
    async with (
        serving(collector_run_pipeline, config(receiver=f"max_body_bytes: {limit}")) as (p, base),
        aiohttp.ClientSession() as s,
    ):
        # exactly at the limit is fine
        pad = limit - len(orjson.dumps(ev(1, data={"pad": ""})))
        event = ev(1, data={"pad": "x" * pad})
        assert len(orjson.dumps(event)) == limit
        assert (await post(s, base + V1, event))[0] == 204

        # one byte over, announced with Content-Length: refused before reading
        over = ev(2, data={"pad": "x" * (pad + 1)})
        status, headers, raw = await post(s, base + V1, over)
        assert status == 413
        assert headers["Content-Type"].startswith(PROBLEM)
        assert f"max_body_bytes={limit}" in orjson.loads(raw)["detail"]

        # a large body with Content-Length
        status, _, _ = await post(s, base + V1, b"[" + b" " * 2_000_000 + b"]")
        assert status == 413

        # chunked (no Content-Length): refused while reading
        async def chunks(n: int):
            yield b"["
            for _ in range(n):
                yield orjson.dumps(ev(3)) + b","
            yield orjson.dumps(ev(4)) + b"]"

        async with s.post(base + V1, data=chunks(50), headers={"Content-Type": JSON}) as r:
            assert r.status == 413
            assert "max_body_bytes" in orjson.loads(await r.read())["detail"]
        # chunked and small: fine
        async with s.post(base + V1, data=chunks(1), headers={"Content-Type": JSON}) as r:
            assert r.status == 204

        events = await p.exporter().wait_for(3)
        assert sorted(e["id"] for e in events) == ["e1", "e3", "e4"]
        # still serving
        assert (await post(s, base + V1, ev(5)))[0] == 204


async def test_more_than_max_events_gets_413_and_nothing_is_queued(collector_run_pipeline):
    async with (
        serving(collector_run_pipeline, config(receiver="max_events: 3")) as (p, base),
        aiohttp.ClientSession() as s,
    ):
        status, headers, raw = await post(s, base + V1, [ev(i) for i in range(4)], BATCH)
        assert status == 413
        assert headers["Content-Type"].startswith(PROBLEM)
        assert "the limit is 3" in orjson.loads(raw)["detail"]
        assert queued(p) == 0
        assert (await post(s, base + V1, [ev(i) for i in range(10, 13)], BATCH))[0] == 204
        events = await p.exporter().wait_for(3)
        assert {e["id"] for e in events} == {"e10", "e11", "e12"}


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_client_that_stalls_mid_body_gets_408_and_the_receiver_keeps_serving(collector_run_pipeline, framing):
    async with serving(collector_run_pipeline, config(receiver="read_timeout: 0.3")) as (p, base):
        port = p.service.receivers["http"].port
        head = b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        partial = orjson.dumps([ev(1), ev(2)])[:30]
        if framing == "content-length":
            head += b"Content-Length: 500\r\n\r\n" + partial
        else:
            head += b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n" % len(partial) + partial + b"\r\n"

        async with aiohttp.ClientSession() as s:
            t0 = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(head)
                await writer.drain()
                # meanwhile, other clients are served
                assert (await post(s, base + V1, ev(3)))[0] == 204
                answer = await asyncio.wait_for(reader.read(65536), 5)
                elapsed = time.monotonic() - t0
                # the server closes the connection after the 408: nothing more comes
                rest = await asyncio.wait_for(reader.read(), 2)
            finally:
                writer.close()
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"application/problem+json" in answer
            assert b"connection: close" in answer.lower()
            assert rest == b""
            assert 0.25 <= elapsed < 3
            assert (await post(s, base + V1, ev(4)))[0] == 204
            await p.exporter().wait_for(2)
            await asyncio.sleep(0.05)
            assert sorted(e["id"] for e in p.exporter().events) == ["e3", "e4"]


# ---------------------------------------------------------------------------
# Backpressure


async def test_backpressure_answers_503_with_retry_after_and_recovers_by_itself(collector_run_pipeline):
    yaml_text = config(exporter="queue: {kind: durable, max_bytes: 1500}, batch: {period: 0.01, max_events: 5}")
    async with serving(collector_run_pipeline, yaml_text) as (p, base), aiohttp.ClientSession() as s:
        exporter = p.exporter()
        exporter.fail_with = [ConnectionError("OpenMeter is down")] * 1_000_000  # nothing drains
        accepted: set[str] = set()
        refused: set[str] = set()
        retry_after = None
        for i in range(60):  # bounded: the queue holds ~1500 bytes, each request ~550
            batch = [ev(f"{i}-{j}") for j in range(3)]
            status, headers, raw = await post(s, base + V1, batch, BATCH)
            if status == 204:
                accepted |= {e["id"] for e in batch}
                continue
            assert status == 503, raw
            assert headers["Content-Type"].startswith(PROBLEM)
            retry_after = headers["Retry-After"]
            refused |= {e["id"] for e in batch}
            break
        assert accepted, "the queue refused even the first request"
        assert retry_after is not None, "the queue never pushed back"
        assert retry_after.isdigit() and int(retry_after) >= 1
        assert p.service.health()["components"]["exporters"]["memory"]["queue"]["refusing"] is True

        exporter.fail_with.clear()  # OpenMeter is back: the queue drains by itself
        deadline = time.monotonic() + 15
        while True:  # a client honouring Retry-After (scaled down) until accepted
            batch = [ev(f"late-{j}") for j in range(3)]
            status, _, _ = await post(s, base + V1, batch, BATCH)
            if status == 204:
                accepted |= {e["id"] for e in batch}
                break
            assert status == 503
            assert time.monotonic() < deadline, "intake did not resume after the queue drained"
            await asyncio.sleep(0.05)
        await exporter.wait_for(len(accepted))
        await until(lambda: queued(p) == 0, what="queue drained")
        delivered = {e["id"] for e in exporter.events}
        assert delivered == accepted
        assert not delivered & refused


# ---------------------------------------------------------------------------
# TLS


async def test_tls_from_cert_and_key_files(collector_run_pipeline, tmp_path, self_signed):
    cert, key = self_signed(tmp_path)
    fragment = f"tls: {{cert_file: '{cert}', key_file: '{key}'}}, auth: {{tokens: [tls-token-5678]}}"
    async with collector_run_pipeline(config(receiver=fragment)) as p:
        port = p.service.receivers["http"].port
        ctx = ssl.create_default_context(cafile=str(cert))
        auth = {"Authorization": "Bearer tls-token-5678"}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            assert (await post(s, f"https://127.0.0.1:{port}{V1}", [ev(1)], headers=auth))[0] == 204
            assert (await post(s, f"https://127.0.0.1:{port}{V3}", [ev(2)], headers=auth))[0] == 202
            assert (await post(s, f"https://127.0.0.1:{port}{V1}", [ev(9)]))[0] == 401
        # the certificate is really checked by a verifying client: one that trusts nothing else fails
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl.create_default_context())) as s:
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await post(s, f"https://127.0.0.1:{port}{V1}", [ev(8)], headers=auth)
        # plain HTTP on the TLS port is not served
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.ClientError):
                await post(s, f"http://127.0.0.1:{port}{V1}", [ev(7)], headers=auth)
        events = await p.exporter().wait_for(2)
        await asyncio.sleep(0.05)
        assert {e["id"] for e in p.exporter().events} == {"e1", "e2"}
        assert len(events) >= 2


async def test_unreadable_tls_material_is_a_config_error(collector_run_pipeline, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("not a certificate", encoding="utf-8")
    key.write_text("not a key", encoding="utf-8")
    with pytest.raises(ConfigError, match="TLS"):
        async with collector_run_pipeline(config(receiver=f"tls: {{cert_file: '{cert}', key_file: '{key}'}}")):
            pass


# ---------------------------------------------------------------------------
# Events without time or id


def _is_arrival_time(value: str, before: dt.datetime, after: dt.datetime) -> bool:
    assert value.endswith("Z") and len(value) == len("2024-05-01T12:00:00.000Z"), value
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    return before - dt.timedelta(milliseconds=1) <= when <= after + dt.timedelta(milliseconds=1)


async def test_missing_time_is_arrival_time_and_missing_id_is_deterministic(
    collector_run_pipeline, collector_storage, tmp_path
):
    bare = {"specversion": "1.0", "source": "app", "type": "api-call", "subject": "cust-1", "data": {"tokens": 5}}
    timed = {**bare, "time": "2024-05-01T12:00:00Z"}
    other = {**bare, "data": {"tokens": 6}}
    no_spec = {k: v for k, v in bare.items() if k != "specversion"}
    own = {**bare, "id": "client-id-1", "time": "2024-05-01T13:00:00+02:00"}
    async with serving(collector_run_pipeline, config()) as (p, base), aiohttp.ClientSession() as s:
        windows = []
        sent = 0
        for body in ([bare], [bare, timed], [other, no_spec, own]):  # the first event is sent twice: a retry
            before = dt.datetime.now(dt.UTC)
            assert (await post(s, base + V1, body, BATCH))[0] == 204
            windows.append((before, dt.datetime.now(dt.UTC)))
            sent += len(body)
            events = await p.exporter().wait_for(sent)  # one request at a time keeps the order known
            await asyncio.sleep(0.02)
    first, retried, with_time, with_other_data, without_spec, with_own = events

    # the retried identical event gets the same id, and each copy its own arrival time
    assert first["id"] == retried["id"]
    assert _is_arrival_time(first["time"], *windows[0])
    assert _is_arrival_time(retried["time"], *windows[1])
    # the id is the documented UUIDv5 of the content without id (and without the filled-in time)
    assert first["id"] == stable_id("cloudevent", bare)
    # anything that differs, including a time the client sent, gives another id
    assert with_time["id"] == stable_id("cloudevent", timed) != first["id"]
    assert with_time["time"] == "2024-05-01T12:00:00Z"
    assert with_other_data["id"] not in {first["id"], with_time["id"]}
    # a missing specversion is filled in, and counts as "1.0" for the id
    assert without_spec["specversion"] == "1.0" and without_spec["id"] == first["id"]
    # what the client sent is never changed
    assert with_own["id"] == "client-id-1" and with_own["time"] == "2024-05-01T13:00:00+02:00"

    # the id does not depend on this process: another service computes the same one
    other_storage = tmp_path / "second"
    other_storage.mkdir()
    async with serving(collector_run_pipeline, config(), storage_dir=other_storage) as (p2, base2):
        async with aiohttp.ClientSession() as s:
            assert (await post(s, base2 + V3, bare, SINGLE))[0] == 202
        again = await p2.exporter().wait_for(1)
    assert again[0]["id"] == first["id"]


async def test_fill_missing_false_refuses_events_without_id_or_time(collector_run_pipeline):
    async with (
        serving(collector_run_pipeline, config(receiver="fill_missing: false")) as (p, base),
        aiohttp.ClientSession() as s,
    ):
        body = [ev(1), ev(2, id=_DROP), ev(3, time=_DROP), ev(4, time=None)]
        status, _, raw = await post(s, base + V1, body, BATCH)
        assert status == 400
        problem = orjson.loads(raw)
        assert [(i["index"], i["field"]) for i in problem["invalid"]] == [(1, "id"), (2, "time"), (3, "time")]
        assert queued(p) == 0
        assert (await post(s, base + V1, [ev(5)], BATCH))[0] == 204
        events = await p.exporter().wait_for(1)
    assert events == [ev(5)]


# ---------------------------------------------------------------------------
# Fuzz: whatever arrives, the answer is a deliberate one


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_field_values = st.one_of(
    st.sampled_from(["1.0", "e1", "src", "2024-05-01T12:00:00Z", "2024-05-01T12:00:00", "application/json", ""]),
    _json,
)
_events = st.dictionaries(
    st.sampled_from(["specversion", "id", "source", "type", "subject", "time", "data", "datacontenttype",
                     "dataschema", "data_base64", "myext", "Bad-Ext"]),
    _field_values,
    max_size=10,
)  # fmt: skip
_valid_events = st.builds(
    lambda i, data: ev(f"fuzz-{i}", data=data),
    st.integers(0, 10**9),
    st.dictionaries(st.text(max_size=8), _json_scalars, max_size=3),
)
_bodies = st.one_of(
    st.binary(max_size=3000),
    _json.map(orjson.dumps),
    _events.map(orjson.dumps),
    st.lists(st.one_of(_events, _valid_events, _json), max_size=8).map(orjson.dumps),
    st.lists(_valid_events, min_size=1, max_size=8).map(orjson.dumps),
    _valid_events.map(orjson.dumps),
)
_header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_content_types = st.one_of(
    st.sampled_from([SINGLE, BATCH, JSON, f"{JSON}; charset=utf-8", f"{BATCH}; charset=utf-8", "text/plain"]),
    st.builds(lambda a, b: f"{a}; {b}", st.sampled_from([SINGLE, BATCH, JSON]), _header_text),
    _header_text,
    st.none(),
)


def test_fuzzed_requests_get_deliberate_answers_never_500(collector_storage):
    yaml_text = config(receiver="max_body_bytes: 2048, max_events: 5", exporter="queue: {kind: memory}")
    with service_in_thread(yaml_text, collector_storage) as p:
        port = p.service.receivers["http"].port
        seen: dict[int, int] = {}

        def send(path: str, body: bytes, ctype: str | None) -> tuple[int, str | None, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            try:
                headers = {"Content-Type": ctype} if ctype is not None else {}
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                return resp.status, resp.getheader("Content-Type"), resp.read()
            finally:
                conn.close()

        @settings(
            max_examples=100,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(path=st.sampled_from([V1, V3]), body=_bodies, ctype=_content_types)
        def check(path: str, body: bytes, ctype: str | None) -> None:
            status, resp_type, raw = send(path, body, ctype)
            seen[status] = seen.get(status, 0) + 1
            assert status in {204, 202, 400, 413, 415}, (status, raw[:300])
            if status in (204, 202):
                assert status == (204 if path == V1 else 202)
            else:
                assert resp_type is not None and resp_type.startswith(PROBLEM)
                assert orjson.loads(raw)["status"] == status

        check()
        assert {204, 202, 400, 415} & set(seen), seen
        # still serving, still healthy
        status, _, _ = send(V1, orjson.dumps(ev("after-fuzz")), JSON)
        assert status == 204
        assert p.service.health()["components"]["receivers"]["http"]["ready"] is True


# ---------------------------------------------------------------------------
# Event rules and metadata


async def test_the_ingest_api_keeps_openmeters_rules_whatever_the_exporter(collector_run_pipeline, tmp_path):
    # The debug exporter takes any CloudEvent, but /api/v1/events is OpenMeter's
    # API: its clients are told at once what OpenMeter would refuse.
    out = tmp_path / "events.jsonl"
    yaml_text = (
        "receivers: {http: {endpoint: '127.0.0.1:0'}}\n"
        f"exporters: {{debug: {{path: '{out}', queue: {{kind: memory}}, batch: {{period: 0.01}}}}}}\n"
    )
    async with serving(collector_run_pipeline, yaml_text) as (_, base), aiohttp.ClientSession() as s:
        status, _, raw = await post(s, base + V1, [ev(1), ev(2, subject=_DROP)], BATCH)
        assert status == 400
        assert [(e["index"], e["field"]) for e in orjson.loads(raw)["invalid"]] == [(1, "subject")]
        assert (await post(s, base + V1, [ev(3)], BATCH))[0] == 204
        await until(lambda: out.exists() and out.read_text().count("\n") == 1, what="the valid event exported")
    assert [orjson.loads(line)["id"] for line in out.read_text().splitlines()] == ["e3"]


async def test_raw_json_records_reach_mappings_with_typed_meta_all_or_nothing(collector_run_pipeline):
    mapping = (
        '{"specversion": "1.0", "id": this.id, "source": meta.receiver, "type": meta.format, '
        '"subject": meta.headers["x-tenant-id"], "data": {"n": this.n}}'
    )
    yaml_text = (
        "receivers: {http: {endpoint: '127.0.0.1:0', format: json, headers: [X-Tenant-Id]}}\n"
        f"processors: {{mapping: {{expression: '{mapping}'}}}}\n"
        f"exporters: {{memory: {{batch: {{period: 0.01}}, {FAST_RETRY}}}}}\n"
    )
    tenant = {"X-Tenant-Id": "acme"}
    async with serving(collector_run_pipeline, yaml_text) as (p, base), aiohttp.ClientSession() as s:
        status, _, _ = await post(s, base + "/ingest", [{"id": "a", "n": 1}], JSON, tenant)
        assert status == 204
        (event,) = await p.exporter().wait_for(1)
        assert (event["source"], event["type"], event["subject"]) == ("http", "json", "acme")
        # Without the header the mapping yields no subject: the whole request is refused (OpenMeter's
        # contract), naming the record, and nothing of it is queued.
        status, _, raw = await post(s, base + "/ingest", [{"id": "b", "n": 2}, {"id": "c", "n": 3}], JSON)
        assert status == 400
        assert {e["index"] for e in orjson.loads(raw)["invalid"]} == {0, 1}
        # FIFO: once a later record arrived, anything committed before it would have too.
        assert (await post(s, base + "/ingest", {"id": "d", "n": 4}, JSON, tenant))[0] == 204
        await p.exporter().wait_for(2)
    assert [e["id"] for e in p.exporter().events] == ["a", "d"]
