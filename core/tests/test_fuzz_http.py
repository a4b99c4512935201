"""Fuzzing the ``http`` receiver's input through real clients (issue 10).

A real receiver on 127.0.0.1 (its own event loop in a thread) takes random
bodies, content types, content encodings and Authorization headers from a
real aiohttp client, and random bytes after a request line from a raw
socket.  Whatever arrives, the answer is a deliberate one -- 204/202, or a
4xx/503 with a problem document -- never a 500, and the receiver keeps
serving.  Bounded: a fixed number of examples, every request with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import zlib
from typing import Any

import aiohttp
import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from collector.testing import service_in_thread

V1 = "/api/v1/events"
V3 = "/api/v3/openmeter/events"
PROBLEM = "application/problem+json"
TOKEN = "fuzz-token-5e1f"
ALLOWED = {204, 202, 400, 401, 408, 413, 415, 503}
YAML = (
    "receivers: {http: {endpoint: '127.0.0.1:0', max_body_bytes: 4096, max_events: 5, "
    f"header_timeout: 5, auth: {{tokens: ['{TOKEN}']}}}}}}\n"
    "exporters: {memory: {batch: {period: 0.01}, queue: {kind: memory}}}\n"
)
SETTINGS = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def ev(i: object, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": "fuzz",
        "type": "api-call",
        "subject": "cust-1",
        "time": "2024-05-01T12:00:00Z",
        "data": {"n": 1},
        **extra,
    }


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)
_events = st.dictionaries(
    st.sampled_from(["specversion", "id", "source", "type", "subject", "time", "data", "datacontenttype",
                     "dataschema", "data_base64", "ext1", "Bad-Name", ""]),
    st.one_of(st.sampled_from(["1.0", "x", "", "2024-05-01T12:00:00Z", "application/json"]), _json),
    max_size=10,
)  # fmt: skip
_valid = st.builds(lambda i: ev(i), st.integers(0, 10**9))
_payloads = st.one_of(
    st.binary(max_size=2000),
    _json.map(orjson.dumps),
    _events.map(orjson.dumps),
    st.lists(st.one_of(_events, _valid, _json), max_size=8).map(orjson.dumps),
    st.lists(_valid, min_size=1, max_size=7).map(orjson.dumps),
    _valid.map(orjson.dumps),
    st.just(b"[" + b"1," * 3000 + b"1]"),  # over max_body_bytes
)
_encodings = st.sampled_from([None, "identity", "gzip", "deflate", "gzip-junk", "br", "compress", "GZIP", "x-y"])
_printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40)
_content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/cloudevents+json",
            "application/cloudevents-batch+json",
            "application/json; charset=utf-8",
            "application/json; charset=latin-1",
            "text/plain",
        ]
    ),
    _printable,
    st.none(),
)
_auth = st.one_of(
    st.sampled_from([f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN}", f"Bearer {TOKEN}x", "Basic x"]),
    _printable,
    st.none(),
)


def _encode(body: bytes, encoding: str | None) -> tuple[bytes, str | None]:
    if encoding in ("gzip", "GZIP"):
        return gzip.compress(body), encoding
    if encoding == "deflate":
        return zlib.compress(body), encoding
    if encoding == "gzip-junk":
        return body, "gzip"
    return body, encoding


def _check_answer(status: int, content_type: str | None, raw: bytes, path: str) -> None:
    assert status in ALLOWED, (status, raw[:300])
    if status in (202, 204):
        assert status == (204 if path == V1 else 202)
        return
    assert content_type is not None and content_type.startswith(PROBLEM), (status, content_type, raw[:300])
    problem = orjson.loads(raw)
    assert problem["status"] == status
    assert len(raw) < 64 * 1024


def test_fuzzed_requests_from_a_real_client_get_deliberate_answers(collector_storage):
    with service_in_thread(YAML, collector_storage) as p:
        port = p.service.receivers["http"].port
        client_loop = asyncio.new_event_loop()
        session = client_loop.run_until_complete(_session())
        seen: dict[int, int] = {}
        try:

            async def send(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str | None, bytes]:
                skip = [] if "Content-Type" in headers else ["Content-Type"]
                async with session.post(
                    f"http://127.0.0.1:{port}{path}", data=body, headers=headers, skip_auto_headers=skip
                ) as resp:
                    return resp.status, resp.headers.get("Content-Type"), await resp.read()

            @SETTINGS
            # Besides the random ones, always a valid single event, a valid batch, an unauthenticated and an
            # unsupported-encoding request: 120 random draws missed every accepted answer once in CI, failing the
            # "every kind of answer" check below by chance.
            @example(path=V1, payload=orjson.dumps(ev("x1")), ctype="application/cloudevents+json", encoding=None,
                     auth=f"Bearer {TOKEN}")  # fmt: skip
            @example(path=V3, payload=orjson.dumps([ev("x2"), ev("x3")]), ctype="application/cloudevents-batch+json",
                     encoding="gzip", auth=f"Bearer {TOKEN}")  # fmt: skip
            @example(path=V1, payload=b"{}", ctype="application/json", encoding=None, auth=None)  # 401
            @example(path=V1, payload=b"{}", ctype="application/json", encoding="br", auth=f"Bearer {TOKEN}")  # 415
            @given(
                path=st.sampled_from([V1, V3]),
                payload=_payloads,
                ctype=_content_types,
                encoding=_encodings,
                auth=_auth,
            )
            def check(path: str, payload: bytes, ctype: str | None, encoding: str | None, auth: str | None) -> None:
                body, content_encoding = _encode(payload, encoding)
                headers: dict[str, str] = {}
                if ctype is not None:
                    headers["Content-Type"] = ctype
                if content_encoding is not None:
                    headers["Content-Encoding"] = content_encoding
                if auth is not None:
                    headers["Authorization"] = auth
                status, content_type, raw = client_loop.run_until_complete(
                    asyncio.wait_for(send(path, body, headers), 10)
                )
                seen[status] = seen.get(status, 0) + 1
                _check_answer(status, content_type, raw, path)

            check()
            # the fuzz reached past authentication into every kind of answer
            assert {204, 202} & set(seen) and {400, 401, 415} <= set(seen), seen
            # still serving, still healthy
            status, _, _ = client_loop.run_until_complete(
                send(
                    V1,
                    orjson.dumps(ev("after")),
                    {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
                )
            )
            assert status == 204
            assert p.service.health()["components"]["receivers"]["http"]["ready"] is True
        finally:
            client_loop.run_until_complete(session.close())
            client_loop.close()


async def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))


_header_names = st.sampled_from(
    ["Content-Length", "Transfer-Encoding", "Content-Type", "Content-Encoding", "Authorization", "Expect", "X-Any"]
)
_header_values = st.one_of(
    st.sampled_from(["chunked", "gzip", "br", "0", "5", "-1", "99999999999", "application/json", "100-continue"]),
    st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
)


@st.composite
def _raw_requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([b"POST", b"GET", b"P\x00ST", b"post", b""]))
    target = draw(st.sampled_from([b"/api/v1/events", b"/", b"*", b"http://x/api/v1/events", b"/%zz"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1x"]))
    lines = [method + b" " + target + b" " + version, b"Host: 127.0.0.1", b"Authorization: bearer " + TOKEN.encode()]
    for name, value in draw(st.lists(st.tuples(_header_names, _header_values), max_size=5)):
        lines.append(name.encode() + b": " + value.encode("latin-1").replace(b"\r", b"").replace(b"\n", b""))
    lines += draw(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\r\n", b"")), max_size=2))
    lines.append(b"Connection: close")
    body = draw(st.one_of(st.binary(max_size=200), st.just(b"0\r\n\r\n"), st.just(b"zz\r\n{}\r\n0\r\n\r\n")))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def test_fuzzed_raw_http_gets_problem_documents_never_500(collector_storage):
    with service_in_thread(YAML, collector_storage) as p:
        port = p.service.receivers["http"].port
        seen: dict[int, int] = {}

        @SETTINGS
        @given(data=_raw_requests())
        def check(data: bytes) -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                with contextlib.suppress(ConnectionError):
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                answer = b""
                with contextlib.suppress(ConnectionError):
                    while chunk := sock.recv(65536):
                        answer += chunk
            if not answer:  # the server may close a request it cannot frame without answering
                seen[0] = seen.get(0, 0) + 1
                return
            head, _, body = answer.partition(b"\r\n\r\n")
            status_line = head.split(b"\r\n", 1)[0]
            status = int(status_line.split(b" ")[1])
            seen[status] = seen.get(status, 0) + 1
            assert status in ALLOWED | {404, 405}, answer[:300]
            if status >= 400:
                assert b"application/problem+json" in head.lower(), answer[:300]
                assert orjson.loads(body)["status"] == status

        check()
        assert {400} <= set(seen), seen
        assert p.service.health()["components"]["receivers"]["http"]["ready"] is True
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            body = orjson.dumps(ev("after-raw"))
            sock.sendall(
                b"POST /api/v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            assert sock.recv(65536).startswith(b"HTTP/1.1 204")
