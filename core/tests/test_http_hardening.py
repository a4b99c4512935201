"""Issue 10 hardening of the ``http`` receiver, each case reproduced first.

Bounded answers to huge invalid requests (point 9), header and idle timeouts,
the connection cap and quiet accept errors (point 10), and the wrong answers
of point 15: a lower-case bearer scheme, unknown Content-Encodings, aiohttp's
own protocol errors.  Everything talks to 127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import errno
import gzip
import logging
import shutil
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest

from collector.events import fill_defaults, validate_event
from collector.telemetry import JsonFormatter
from collector.testing import FakeClock, eventually, read_until_closed

V1 = "/api/v1/events"
JSON = "application/json"
PROBLEM = "application/problem+json"


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
    return event


async def post(
    s: aiohttp.ClientSession, port: int, body: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    hdrs = {"Content-Type": JSON, **(headers or {})}
    async with s.post(f"http://127.0.0.1:{port}{V1}", data=body, headers=hdrs) as r:
        return r.status, dict(r.headers), await r.read()


# ---------------------------------------------------------------------------
# Point 9: error answers are bounded


async def test_a_huge_request_of_invalid_events_gets_a_small_problem_document(serve_http):
    # ~4 MB of events whose every attribute is invalid: before, one problem per
    # attribute was reported (370,000 of them in ~100 MB); now the first 100
    # plus the count, and no echoed value is longer than a short quote.
    long_name = "X" * 5000  # an invalid attribute name, echoed as `field`
    long_id = "i" * 20_000  # echoed as `id`
    events: list[Any] = [{"id": long_id, long_name: 1, "time": "t" * 10_000}]
    per_event = 60
    while True:
        event = {f"K{j:02d}": 0 for j in range(per_event)}
        events.append(event)
        if len(events) % 500 == 0 and len(orjson.dumps(events)) > 3_900_000:
            break
    body = orjson.dumps(events)
    assert 3_900_000 < len(body) <= 4 * 1024 * 1024
    n = len(events)
    assert n <= 10_000
    async with serve_http() as (p, port), aiohttp.ClientSession() as s:
        status, headers, raw = await post(s, port, body)
        assert status == 400
        assert headers["Content-Type"].startswith(PROBLEM)
        assert len(raw) < 64 * 1024, f"a {len(raw)}-byte problem document"
        problem = orjson.loads(raw)
        assert len(problem["invalid"]) == 100
        assert problem["truncated"] is True
        # checking stopped once 100 problems were found (the first event has 4, the others 63 each):
        # the count is of the events checked, and the rest are counted as unchecked
        now = datetime.now(UTC)
        found = [len(validate_event(fill_defaults(e, now=now), i)) for i, e in enumerate(events[:3])]
        assert problem["invalid_count"] == sum(found)
        assert problem["unchecked_events"] == n - 3
        assert str(problem["invalid_count"]) in problem["detail"] and str(n - 3) in problem["detail"]
        assert str(problem["invalid_count"]) in problem["detail"]
        assert len(problem["detail"]) < 1000
        for entry in problem["invalid"]:
            assert len(entry["message"]) <= 500
            assert entry["field"] is None or len(entry["field"]) <= 64
            assert len(entry.get("id", "")) <= 256
        # the first event is still named, with its field quoted short
        assert problem["invalid"][0]["index"] == 0
        assert any(e["field"] and e["field"].startswith("XXXX") for e in problem["invalid"])
        assert p.service.exporters["memory"].queue.stats().events == 0
        # and the receiver answers the next request normally
        assert (await post(s, port, orjson.dumps(ev(1))))[0] == 204


async def test_a_few_invalid_events_are_all_reported_and_not_truncated(serve_http):
    async with serve_http() as (_, port), aiohttp.ClientSession() as s:
        status, _, raw = await post(s, port, orjson.dumps([ev(1, source=""), ev(2), ev(3, subject=7)]))
        assert status == 400
        problem = orjson.loads(raw)
        assert [(e["index"], e["field"]) for e in problem["invalid"]] == [(0, "source"), (2, "subject")]
        assert problem["invalid_count"] == 2 and problem["truncated"] is False


async def test_long_client_values_are_not_echoed_whole(serve_http):
    async with serve_http() as (_, port), aiohttp.ClientSession() as s:
        ctype = "application/" + "x" * 6000
        status, _, raw = await post(s, port, orjson.dumps(ev(1)), {"Content-Type": ctype})
        assert status == 415
        assert len(orjson.loads(raw)["detail"]) < 500
        async with s.get(f"http://127.0.0.1:{port}/" + "p" * 7000) as r:
            assert r.status == 404
            assert len(orjson.loads(await r.read())["detail"]) < 500


# ---------------------------------------------------------------------------
# Point 10: header and idle timeouts, the connection cap, quiet accept errors


async def test_a_slow_header_connection_gets_408_and_is_closed(serve_http):
    async with serve_http("header_timeout: 0.3, idle_timeout: 30") as (_, port), aiohttp.ClientSession() as s:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: app")
            await writer.drain()
            # meanwhile others are served
            assert (await post(s, port, orjson.dumps(ev(1))))[0] == 204
            t0 = time.monotonic()
            answer = await read_until_closed(reader, 5)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert PROBLEM.encode() in answer
            assert time.monotonic() - t0 < 3
            # a connection that never sends a byte is closed too, without an answer
            assert await read_until_closed(silent_reader, 5) == b""
        finally:
            writer.close()
            silent_writer.close()
        assert (await post(s, port, orjson.dumps(ev(2))))[0] == 204


async def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(serve_http):
    async with serve_http("header_timeout: 30, idle_timeout: 0.3") as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            body = orjson.dumps(ev(1))
            writer.write(
                b"POST /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
            assert status.startswith(b"HTTP/1.1 204"), status
            # the connection was kept alive for the next request, then closed when idle
            t0 = time.monotonic()
            rest = await read_until_closed(reader, 5)
            assert b"HTTP/1.1" not in rest
            assert time.monotonic() - t0 >= 0.2
        finally:
            writer.close()


async def test_connections_over_max_connections_get_503_and_are_closed(serve_http):
    async with serve_http("header_timeout: 30, idle_timeout: 30, max_connections: 3") as (p, port):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        try:
            # all three are open and counted
            await eventually(lambda: p.service.receivers["http"].health()["connections"] == 3, timeout=5)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                answer = await read_until_closed(reader, 5)
            finally:
                writer.close()
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"retry-after: 1" in answer.lower()
            assert b"max_connections" in answer
            # a held connection still works
            r0, w0 = held[0]
            body = orjson.dumps(ev(1))
            w0.write(
                b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            assert (await read_until_closed(r0, 5)).startswith(b"HTTP/1.1 204")
        finally:
            for _, w in held:
                w.close()
        # once connections close, new ones are served again
        await eventually(lambda: p.service.receivers["http"].health()["connections"] == 0, timeout=5)
        async with aiohttp.ClientSession() as s:
            assert (await post(s, port, orjson.dumps(ev(2))))[0] == 204


async def test_repeated_accept_errors_are_logged_once_per_interval_with_a_count(serve_http, monkeypatch, caplog):
    monkeypatch.setattr(logging.getLogger("collector"), "propagate", True)
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    async with serve_http(clock=clock) as (_, port):
        loop = asyncio.get_running_loop()
        listener = socket.socket()
        try:
            # what asyncio's accept loop reports when the process runs out of descriptors
            for _ in range(500):
                loop.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                        "socket": listener,
                    }
                )
            clock.advance(11)
            loop.call_exception_handler(
                {
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                    "socket": listener,
                }
            )
        finally:
            listener.close()
        lines = [r for r in caplog.records if "accept" in r.getMessage() and r.levelno >= logging.WARNING]
        assert len(lines) == 2, [r.getMessage() for r in lines]
        assert "Too many open files" in lines[0].getMessage()
        assert "500 time(s)" in lines[1].getMessage() or "500" in lines[1].getMessage()
        assert all(r.exc_info is None for r in lines)
        # other loop errors still reach the previous handler
        async with aiohttp.ClientSession() as s:
            assert (await post(s, port, orjson.dumps(ev(1))))[0] == 204


# ---------------------------------------------------------------------------
# Point 15: wrong answers


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer", "bEaReR"])
async def test_the_bearer_scheme_is_case_insensitive(serve_http, scheme):
    async with (
        serve_http("auth: {tokens: [tok-1234abcd]}") as (_, port),
        aiohttp.ClientSession() as s,
    ):
        status, _, raw = await post(s, port, orjson.dumps(ev(1)), {"Authorization": f"{scheme} tok-1234abcd"})
        assert status == 204, raw
        # the token itself stays case-sensitive
        status, _, _ = await post(s, port, orjson.dumps(ev(2)), {"Authorization": f"{scheme} TOK-1234ABCD"})
        assert status == 401


@pytest.mark.parametrize("encoding", ["br", "compress", "zstd", "x-custom", "gzip, br"])
async def test_an_unknown_content_encoding_is_415_naming_the_supported_ones(serve_http, encoding):
    async with serve_http() as (p, port), aiohttp.ClientSession() as s:
        status, headers, raw = await post(s, port, orjson.dumps(ev(1)), {"Content-Encoding": encoding})
        assert status == 415, raw
        assert headers["Content-Type"].startswith(PROBLEM)
        detail = orjson.loads(raw)["detail"]
        assert "gzip" in detail and "deflate" in detail and "not valid JSON" not in detail
        assert p.service.exporters["memory"].queue.stats().events == 0
        # the supported ones still work
        assert (await post(s, port, gzip.compress(orjson.dumps(ev(2))), {"Content-Encoding": "gzip"}))[0] == 204
        assert (await post(s, port, orjson.dumps(ev(3)), {"Content-Encoding": "identity"}))[0] == 204


PROTOCOL_ERRORS = {
    "content-length-with-chunked": (
        b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "bad-chunk-size": (
        b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    ),
    "bad-header-line": b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "bad-request-line": b"POST /api/v1/events HTTP/9\r\nHost: x\r\n\r\n",
    "brotli-not-installed": (
        b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: br\r\nContent-Length: 2\r\n\r\n{}"
    ),
}


@pytest.mark.parametrize("raw", list(PROTOCOL_ERRORS.values()), ids=list(PROTOCOL_ERRORS))
async def test_protocol_errors_are_problem_documents_logged_on_one_line(serve_http, monkeypatch, caplog, raw):
    monkeypatch.setattr(logging.getLogger("collector"), "propagate", True)
    caplog.set_level(logging.DEBUG)
    async with serve_http() as (_, port):
        caplog.clear()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(raw)
            await writer.drain()
            answer = await read_until_closed(reader, 5)
        finally:
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0].split(b" ")[1] in (b"400", b"415"), answer
        assert PROBLEM.encode() in head.lower(), answer
        problem = orjson.loads(body)
        assert problem["status"] in (400, 415) and problem["detail"]
        async with aiohttp.ClientSession() as s:
            assert (await post(s, port, orjson.dumps(ev(1))))[0] == 204
    # logged: once, by the collector's logger, one line, no traceback
    mine = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith("collector")]
    assert any("from 127.0.0.1" in r.getMessage() for r in mine), [r.getMessage() for r in mine]
    for record in caplog.records:
        if record.levelno >= logging.INFO:
            assert record.exc_info is None, (record.name, record.getMessage())
            assert "\n" not in JsonFormatter().format(record)


# ---------------------------------------------------------------------------
# Point 15: read-only storage with an existing queue


def _can_mount_read_only() -> bool:
    probe = (
        subprocess.run(
            ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o ro tmpfs /mnt"], capture_output=True, timeout=10
        )
        if shutil.which("unshare")
        else None
    )
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(not _can_mount_read_only(), reason="needs unshare -m and mount (a private read-only bind mount)")
def test_read_only_storage_with_an_existing_queue_exits_with_one_clear_line(tmp_path):
    storage = tmp_path / "storage"
    storage.mkdir()
    config_file = tmp_path / "collector.yaml"
    config_file.write_text(
        "receivers: {http: {endpoint: '127.0.0.1:0'}}\n"
        f"exporters: {{debug: {{path: '{tmp_path / 'out.jsonl'}', queue: {{kind: durable}}}}}}\n"
        f"storage: {{directory: '{storage}'}}\n"
        "service: {telemetry: {endpoint: null}, pipelines: {p: {receivers: [http], exporters: [debug]}}}\n",
        encoding="utf-8",
    )
    cmd = [sys.executable, "-m", "collector.cli", "run", "-c", str(config_file)]
    # a first run creates the queue, then stops on SIGINT
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not any((storage / "exporters" / "debug").glob("queue*")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        first.send_signal(2)
        first.wait(20)
    assert any((storage / "exporters" / "debug").glob("queue*")), "the first run created no queue"
    # the second run sees the same storage through a read-only bind mount (root ignores file modes)
    script = f"mount --bind '{storage}' '{storage}' && mount -o remount,bind,ro '{storage}' && exec \"$@\""
    second = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, "sh", *cmd], capture_output=True, text=True, timeout=30
    )
    assert second.returncode != 0
    assert "Traceback" not in second.stderr
    errors = [line for line in second.stderr.splitlines() if '"level":"error"' in line or "ERROR" in line]
    assert len(errors) == 1, second.stderr
    assert str(storage) in errors[0] and "read-only" in errors[0].lower(), errors[0]
