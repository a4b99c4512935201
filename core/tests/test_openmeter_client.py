"""The openmeter exporter's HTTP/1.1 client (collector.builtin.openmeter.client) against real sockets.

Each test serves scripted answers from an asyncio server on 127.0.0.1 and checks what the
client sent, what it made of the answer, and which connections it kept or dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httptools
import pytest

from collector.builtin.openmeter import client
from collector.builtin.openmeter.client import ClientError, PostClient
from collector.builtin.openmeter.config import OpenMeterExporterConfig

Script = Callable[[int, int], bytes | None]
"""(connection number, request number on it) -> the bytes to answer, or None to close without answering."""


class Server:
    """Reads whole requests (httptools) and answers each as the script says."""

    def __init__(self, script: Script, *, close_after: bool = False) -> None:
        self.script = script
        self.close_after = close_after
        self.connections = 0
        self.requests: list[tuple[int, bytes, dict[str, str], bytes]] = []  # (connection, url, headers, body)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, served = self.connections, 0
        done: list[tuple[bytes, dict[str, str], bytes]] = []

        class Req:
            url, headers, body = b"", {}, b""

            def on_url(self, url: bytes) -> None:
                self.url += url

            def on_header(self, name: bytes, value: bytes) -> None:
                self.headers[name.decode().lower()] = value.decode()

            def on_body(self, body: bytes) -> None:
                self.body += body

            def on_message_complete(self) -> None:
                done.append((self.url, dict(self.headers), self.body))
                self.url, self.headers, self.body = b"", {}, b""

        parser = httptools.HttpRequestParser(Req())
        try:
            while data := await reader.read(65536):
                parser.feed_data(data)
                while done:
                    url, headers, body = done.pop(0)
                    self.requests.append((number, url, headers, body))
                    served += 1
                    answer = self.script(number, served)
                    if answer is None:
                        return
                    writer.write(answer)
                    await writer.drain()
                    if self.close_after:
                        return
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(server: Server, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


def answer(status: int, body: bytes = b"", headers: str = "") -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n%s\r\n%s" % (status, len(body), headers.encode(), body)


async def test_requests_share_a_kept_alive_connection_and_carry_the_headers():
    server = Server(lambda c, n: answer(204))
    async with serving(server) as port:
        c = PostClient(f"http://127.0.0.1:{port}/api/v1/events?x=1", {"Content-Type": "a/b", "X-Tenant": "t1"}, None)
        try:
            for i in range(3):
                got = await c.post(b'[{"n":%d}]' % i)
                assert (got.status, got.body, got.truncated) == (204, b"", False)
        finally:
            await c.close()
    assert server.connections == 1
    assert [r[3] for r in server.requests] == [b'[{"n":0}]', b'[{"n":1}]', b'[{"n":2}]']
    _, url, headers, _ = server.requests[0]
    assert url == b"/api/v1/events?x=1"
    assert headers["host"] == f"127.0.0.1:{port}"
    assert headers["content-type"] == "a/b" and headers["x-tenant"] == "t1"
    assert headers["content-length"] == "9"


async def test_connection_close_and_http_1_0_answers_are_not_reused():
    server = Server(lambda c, n: answer(204, headers="Connection: close\r\n"))
    async with serving(server) as port:
        c = PostClient(f"http://127.0.0.1:{port}/", {}, None)
        for _ in range(3):
            assert (await c.post(b"[]")).status == 204
        await c.close()
    assert server.connections == 3


async def test_a_kept_alive_connection_the_server_dropped_is_replaced_without_an_error():
    # The server answers, then closes the connection as if its keep-alive had run out.
    server = Server(lambda c, n: answer(202), close_after=True)
    async with serving(server) as port:
        c = PostClient(f"http://127.0.0.1:{port}/", {}, None)
        assert (await c.post(b"[1]")).status == 202
        await asyncio.sleep(0.05)  # the close has arrived: the pooled connection is known dead
        assert (await c.post(b"[2]")).status == 202
        await c.close()
    assert [r[3] for r in server.requests] == [b"[1]", b"[2]"]


async def test_a_request_dropped_unanswered_on_a_reused_connection_is_sent_once_more():
    # The second request on the first connection is read, then the connection closes unanswered
    # (a server that timed the connection out just as the request arrived).
    server = Server(lambda c, n: None if (c, n) == (1, 2) else answer(204))
    async with serving(server) as port:
        c = PostClient(f"http://127.0.0.1:{port}/", {}, None)
        assert (await c.post(b"[1]")).status == 204
        assert (await c.post(b"[2]")).status == 204
        await c.close()
    assert [(r[0], r[3]) for r in server.requests] == [(1, b"[1]"), (1, b"[2]"), (2, b"[2]")]


async def test_a_new_connection_closed_unanswered_is_an_error_not_a_retry():
    server = Server(lambda c, n: None)
    async with serving(server) as port:
        c = PostClient(f"http://127.0.0.1:{port}/", {}, None)
        with pytest.raises(ClientError, match="closed"):
            await c.post(b"[1]")
    assert len(server.requests) == 1


async def test_an_error_body_is_cut_at_the_limit_and_its_connection_dropped():
    big = b"x" * 100_000
    server = Server(lambda c, n: answer(400, big, "Content-Type: text/plain; charset=latin-1\r\n"))
    async with serving(server) as port:
        c = PostClient(f"http://127.0.0.1:{port}/", {}, None)
        got = await c.post(b"[]", limit=1000)
        assert (got.status, len(got.body), got.truncated) == (400, 1000, True)
        assert got.text() == "x" * 1000
        assert (await c.post(b"[]", limit=1000)).status == 400
        await c.close()
    assert server.connections == 2


async def test_chunked_interim_and_informational_answers():
    chunked = (
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
        b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nslow \r\n5\r\ndown!\r\n0\r\n\r\n"
    )
    server = Server(lambda c, n: chunked)
    async with serving(server) as port:
        c = PostClient(f"http://127.0.0.1:{port}/", {}, None)
        got = await c.post(b"[]")
        assert (got.status, got.body, got.headers["retry-after"]) == (429, b"slow down!", "7")
        assert "link" not in got.headers
        assert (await c.post(b"[]")).status == 429  # the chunked answer left the connection reusable
        await c.close()
    assert server.connections == 1


async def test_answers_framed_by_the_end_of_the_connection():
    server = Server(lambda c, n: b"HTTP/1.0 400 Bad\r\nContent-Type: text/plain\r\n\r\nno such meter", close_after=True)
    async with serving(server) as port:
        c = PostClient(f"http://127.0.0.1:{port}/", {}, None)
        got = await c.post(b"[]")
        assert (got.status, got.body) == (400, b"no such meter")
    cut = Server(lambda c, n: b"HTTP/1.1 500 Oops\r\nContent-Length: 50\r\n\r\nonly part", close_after=True)
    async with serving(cut) as port:
        with pytest.raises(ClientError, match="closed"):  # an error answer cut short is not an answer
            await PostClient(f"http://127.0.0.1:{port}/", {}, None).post(b"[]")
    said = Server(lambda c, n: b"HTTP/1.1 202 Accepted\r\nContent-Length: 50\r\n\r\n{", close_after=True)
    async with serving(said) as port:  # a 2xx was said: delivered, whatever became of its body
        assert (await PostClient(f"http://127.0.0.1:{port}/", {}, None).post(b"[]")).status == 202


async def test_an_answer_that_is_not_http_is_an_error():
    server = Server(lambda c, n: b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    async with serving(server) as port:
        c = PostClient(f"http://127.0.0.1:{port}/", {}, None)
        with pytest.raises(ClientError, match="not valid HTTP"):
            await c.post(b"[]")


async def test_nobody_listening_is_an_error():
    async with serving(Server(lambda c, n: answer(204))) as port:
        pass  # closed again: nothing listens on the port
    c = PostClient(f"http://127.0.0.1:{port}/", {}, None)
    with pytest.raises(ClientError, match="cannot connect"):
        await c.post(b"[]")


async def test_a_request_cut_short_drops_its_connection_and_the_next_one_works():
    slow = asyncio.Event()

    def script(c: int, n: int) -> bytes | None:
        return answer(204)

    server = Server(script)
    original = server.handle

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.connections == 0:
            server.connections += 1
            await slow.wait()  # never answers the first connection
            writer.close()
            return
        await original(reader, writer)

    server.handle = handle  # type: ignore[method-assign]
    async with serving(server) as port:
        c = PostClient(f"http://127.0.0.1:{port}/", {}, None)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(c.post(b"[1]"), 0.2)
        assert (await c.post(b"[2]")).status == 204
        slow.set()
        await c.close()


async def test_url_credentials_become_basic_auth_and_a_default_port_is_left_out_of_host():
    c = PostClient("http://us%40er:p%3Ass@example.com/api", {}, None)
    head = c._head.decode()
    assert "Host: example.com\r\n" in head
    assert "Authorization: Basic dXNAZXI6cDpzcw==\r\n" in head  # us@er:p:ss
    assert "POST /api HTTP/1.1" in head
    with pytest.raises(ValueError, match="line breaks"):
        PostClient("http://example.com/", {"X-Evil": "a\r\nInjected: 1"}, None)


async def test_tls_with_the_servers_ca_and_with_verification_off(tmp_path: Path, self_signed):
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server = Server(lambda c, n: answer(204))
    async with serving(server, server_ctx) as port:
        url = f"https://127.0.0.1:{port}/api/v1/events"
        trusted = PostClient(url, {}, ssl.create_default_context(cafile=str(cert)))
        assert (await trusted.post(b"[]")).status == 204
        await trusted.close()
        with pytest.raises(ClientError, match="cannot connect"):  # the system CAs do not know it
            await PostClient(url, {}, None).post(b"[]")
        insecure = ssl.create_default_context()
        insecure.check_hostname, insecure.verify_mode = False, ssl.CERT_NONE
        c = PostClient(url, {}, insecure)
        assert (await c.post(b"[]")).status == 204
        await c.close()


def test_an_idle_connection_is_not_reused_past_the_idle_limit(monkeypatch):
    conn = client._Connection()

    class Transport:
        def is_closing(self) -> bool:
            return False

        def close(self) -> None:
            pass

    conn.transport = Transport()  # type: ignore[assignment]
    assert conn.usable()
    monkeypatch.setattr(client, "IDLE_REUSE_S", 0.0)
    assert not conn.usable()


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X-Evil": "a\r\nInjected: 1"}, "line break"),
        ({"Bad Name": "x"}, "not an HTTP token"),
        ({"X:Colon": "x"}, "not an HTTP token"),
    ],
)
def test_headers_that_would_break_the_request_are_refused_by_the_configuration(headers, message):
    with pytest.raises(ValueError, match=message):
        OpenMeterExporterConfig(url="http://example.com", headers=headers)
    assert OpenMeterExporterConfig(url="http://example.com", headers={"X-Tenant-Id": "a b; c"}).headers
