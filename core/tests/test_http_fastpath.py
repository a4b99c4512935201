"""The http receiver's fast path (collector.fastpath), on asyncio's loop and on uvloop (what `collector run` uses).

Whole, plain POSTs are answered without aiohttp's request objects (their answers carry
``Server: collector``); anything else on a connection -- and everything after it -- goes to
aiohttp (``Server: Python/... aiohttp/...``).  The limits hold on both paths, and requests
on one connection are answered in order whichever path answers them.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import time
from typing import Any

import orjson
import pytest

from collector.testing import eventually, read_until_closed

uvloop = pytest.importorskip("uvloop")

# pytest-asyncio's replacement (the pytest_asyncio_loop_factories hook) applies to every test of the
# run once implemented; this module alone needs both loops.
pytestmark = pytest.mark.filterwarnings('ignore:Overriding the "event_loop_policy" fixture:DeprecationWarning')

V1 = "/api/v1/events"


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Each test on asyncio's loop and on uvloop (whose transports are not asyncio.Transport subclasses)."""
    return uvloop.EventLoopPolicy() if request.param == "uvloop" else asyncio.DefaultEventLoopPolicy()


def ev(i: int) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": "test",
        "type": "api-call",
        "subject": "cust-1",
        "time": "2024-05-01T12:00:00Z",
        "data": {"n": i},
    }


def request(body: bytes, *, path: str = V1, extra: str = "", method: str = "POST") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 answer: status, headers (lower-case names), body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 5)
    return status, headers, body


def fast(headers: dict[str, str]) -> bool:
    return headers.get("server") == "collector"


async def test_plain_posts_take_the_fast_path_and_the_rest_of_the_connection_goes_to_aiohttp(serve_http):
    async with serve_http() as (p, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request(orjson.dumps(ev(1))))
            status, headers, body = await read_answer(reader)
            assert (status, body) == (204, b"") and fast(headers), headers
            assert "date" in headers
            # a gzip body is not the fast path's: aiohttp decodes it, and keeps the connection
            writer.write(request(gzip.compress(orjson.dumps(ev(2))), extra="Content-Encoding: gzip\r\n"))
            status, headers, _ = await read_answer(reader)
            assert status == 204 and not fast(headers), headers
            writer.write(request(orjson.dumps(ev(3))))
            status, headers, _ = await read_answer(reader)
            assert status == 204 and not fast(headers)
        finally:
            writer.close()
        events = await p.exporter("memory").wait_for(3)
        assert sorted(e["id"] for e in events) == ["e1", "e2", "e3"]


async def test_pipelined_requests_are_answered_in_order_across_both_paths(serve_http):
    async with serve_http() as (p, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(
                request(orjson.dumps(ev(1)))
                + request(b"{not json")
                + request(orjson.dumps([ev(2), ev(3)]))
                + request(b"", method="GET")
                + request(orjson.dumps(ev(4)))
            )
            answers = [await read_answer(reader) for _ in range(5)]
        finally:
            writer.close()
        assert [a[0] for a in answers] == [204, 400, 204, 405, 204]
        assert [fast(a[1]) for a in answers] == [True, True, True, False, False]
        assert b"not valid JSON" in answers[1][2]
        assert answers[1][1]["content-type"] == "application/problem+json"
        events = await p.exporter("memory").wait_for(4)
        assert sorted(e["id"] for e in events) == ["e1", "e2", "e3", "e4"]


async def test_a_request_that_arrives_in_pieces_is_read_whole(serve_http):
    async with serve_http() as (p, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            whole = request(orjson.dumps([ev(i) for i in range(50)]))
            for piece in (whole[:10], whole[10:80], whole[80:500], whole[500:]):
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(0.02)
            status, headers, _ = await read_answer(reader)
            assert status == 204 and fast(headers)
        finally:
            writer.close()
        assert len(await p.exporter("memory").wait_for(50)) == 50


async def test_refusals_on_the_fast_path_keep_their_status_and_headers(serve_http):
    async with serve_http("auth: {tokens: [s3cret-token]}, max_events: 2") as (p, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request(orjson.dumps(ev(1))))
            status, headers, body = await read_answer(reader)
            assert status == 401 and fast(headers)
            assert headers["www-authenticate"].startswith("Bearer")
            auth = "Authorization: Bearer s3cret-token\r\n"
            writer.write(request(orjson.dumps([ev(1), ev(2), ev(3)]), extra=auth))
            status, headers, body = await read_answer(reader)
            assert status == 413 and b"the limit is 2" in body
            writer.write(request(orjson.dumps({**ev(1), "time": "yesterday"}), extra=auth))
            status, headers, body = await read_answer(reader)
            assert status == 400 and orjson.loads(body)["invalid"][0]["field"] == "time"
            writer.write(request(orjson.dumps(ev(9)), path="/api/v3/openmeter/events", extra=auth))
            status, headers, _ = await read_answer(reader)
            assert status == 202 and fast(headers)
        finally:
            writer.close()
        assert [e["id"] for e in await p.exporter("memory").wait_for(1)] == ["e9"]
        samples = {
            (s.labels["code"]): s.value
            for m in p.service.telemetry.metrics.registry.collect()
            if m.name == "collector_receiver_requests"
            for s in m.samples
            if s.name.endswith("_total")
        }
        assert samples == {"401": 1, "413": 1, "400": 1, "202": 1}


async def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(serve_http):
    async with serve_http("read_timeout: 0.3") as (_, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request(b"x" * 100)[:-90])
            t0 = time.monotonic()
            answer = await read_until_closed(reader, 5)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"connection: close" in answer.lower()
        assert b"the body did not arrive within 0.3s" in answer
        assert time.monotonic() - t0 < 3


async def test_partial_headers_get_408_and_a_silent_or_idle_connection_is_closed(serve_http):
    async with serve_http("header_timeout: 0.3, idle_timeout: 0.5") as (_, port):
        partial = await asyncio.open_connection("127.0.0.1", port)
        silent = await asyncio.open_connection("127.0.0.1", port)
        idle = await asyncio.open_connection("127.0.0.1", port)
        try:
            partial[1].write(b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nContent-Ty")
            idle[1].write(request(orjson.dumps(ev(1))))
            assert (await read_answer(idle[0]))[0] == 204
            t0 = time.monotonic()
            answer = await read_until_closed(partial[0], 5)
            assert answer.startswith(b"HTTP/1.1 408 ") and b"header_timeout" in answer
            assert await read_until_closed(silent[0], 5) == b""
            # kept alive after its answer, then closed once idle for idle_timeout
            assert await read_until_closed(idle[0], 5) == b""
            assert time.monotonic() - t0 >= 0.3
        finally:
            for _, w in (partial, silent, idle):
                w.close()


async def test_connections_over_max_connections_get_503(serve_http):
    async with serve_http("max_connections: 2") as (p, port):
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        try:
            await eventually(lambda: p.service.receivers["http"].health()["connections"] == 2, timeout=5)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                answer = await read_until_closed(reader, 5)
            finally:
                writer.close()
            assert answer.startswith(b"HTTP/1.1 503 ") and b"max_connections" in answer
            held[0][1].write(request(orjson.dumps(ev(1))))
            assert (await read_answer(held[0][0]))[0] == 204
        finally:
            for _, w in held:
                w.close()
        await eventually(lambda: p.service.receivers["http"].health()["connections"] == 0, timeout=5)


async def test_stopping_closes_kept_alive_connections(serve_http):
    async with serve_http() as (p, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request(orjson.dumps(ev(1))))
        assert (await read_answer(reader))[0] == 204
        stopped = asyncio.ensure_future(p.service.receivers["http"].shutdown(5))
        try:
            assert await read_until_closed(reader, 5) == b""
            await asyncio.wait_for(stopped, 5)
        finally:
            writer.close()


async def test_the_fast_path_and_the_hand_over_work_over_tls(serve_http, tmp_path, self_signed):
    cert, key = self_signed(tmp_path)
    async with serve_http(f"tls: {{cert_file: '{cert}', key_file: '{key}'}}") as (p, port):
        ctx = ssl.create_default_context(cafile=str(cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        try:
            writer.write(request(orjson.dumps(ev(1))))
            status, headers, _ = await read_answer(reader)
            assert status == 204 and fast(headers)
            writer.write(request(gzip.compress(orjson.dumps(ev(2))), extra="Content-Encoding: gzip\r\n"))
            status, headers, _ = await read_answer(reader)
            assert status == 204 and not fast(headers)
        finally:
            writer.close()
        assert sorted(e["id"] for e in await p.exporter("memory").wait_for(2)) == ["e1", "e2"]
