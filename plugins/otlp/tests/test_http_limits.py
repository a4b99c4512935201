"""Issue 10, point 10 for OTLP/HTTP: header and idle timeouts and a connection cap.

Without them an idle or slow-header connection stayed open indefinitely, and
enough of them exhausted the process's file descriptors.  The OTLP/HTTP server
uses the core's guarded listener (``collector.api.start_http_server``), so the
same limits hold as on the core's ``http`` receiver.  Every connection goes to
127.0.0.1 and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import aiohttp
from otlp_support import logs_request, pipeline_yaml

from collector.testing import eventually, read_until_closed, run_pipeline

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def limits_yaml(limits: str) -> str:
    yaml_text = pipeline_yaml()
    old = 'http: {endpoint: "127.0.0.1:0"}'
    assert old in yaml_text
    return yaml_text.replace(old, f'http: {{endpoint: "127.0.0.1:0", {limits}}}')


def export_request(body: bytes, close: bool = False) -> bytes:
    return (
        b"POST /v1/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
        + (b"Connection: close\r\n" if close else b"")
        + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )


def http_port(p: Any) -> int:
    port = p.service.receivers["otlp"].http.port
    assert port
    return int(port)


async def test_an_idle_keep_alive_connection_is_closed_after_idle_timeout(registry, tmp_path):
    yaml_text = limits_yaml("header_timeout: 30s, idle_timeout: 0.3s")
    async with run_pipeline(yaml_text, tmp_path, registry=registry) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", http_port(p))
        try:
            writer.write(export_request(logs_request(["a"]).SerializeToString()))
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
            assert status.startswith(b"HTTP/1.1 200"), status
            # kept alive for a next request, then closed once idle for idle_timeout
            t0 = time.monotonic()
            rest = await read_until_closed(reader, 5)
            assert b"HTTP/1.1" not in rest
            assert time.monotonic() - t0 >= 0.2
        finally:
            writer.close()
        await p.exporter().wait_for(1)


async def test_a_slow_header_connection_gets_408_and_is_closed(registry, tmp_path):
    yaml_text = limits_yaml("header_timeout: 0.3s, idle_timeout: 30s")
    async with run_pipeline(yaml_text, tmp_path, registry=registry) as p:
        port = http_port(p)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(b"POST /v1/logs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl")
            await writer.drain()
            t0 = time.monotonic()
            answer = await read_until_closed(reader, 5)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert time.monotonic() - t0 < 3
            # an OTLP error body: a google.rpc.Status in JSON naming the setting
            status = json.loads(answer.partition(b"\r\n\r\n")[2])
            assert status["code"] == 4 and "header_timeout" in status["message"], status  # DEADLINE_EXCEEDED
            # a connection that never sends a byte is closed too, without an answer
            assert await read_until_closed(silent_reader, 5) == b""
        finally:
            writer.close()
            silent_writer.close()
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/v1/logs"
            async with s.post(url, data=logs_request(["b"]).SerializeToString(), headers=PROTOBUF) as resp:
                assert resp.status == 200


async def test_connections_over_max_connections_get_503_and_are_closed(registry, tmp_path):
    yaml_text = limits_yaml("header_timeout: 30s, idle_timeout: 30s, max_connections: 3")
    async with run_pipeline(yaml_text, tmp_path, registry=registry) as p:
        port = http_port(p)
        receiver = p.service.receivers["otlp"]
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        try:
            await eventually(lambda: receiver.health()["http"]["connections"] == 3, timeout=5)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                answer = await read_until_closed(reader, 5)
            finally:
                writer.close()
            assert answer.startswith(b"HTTP/1.1 503 "), answer
            assert b"retry-after: 1" in answer.lower()
            status = json.loads(answer.partition(b"\r\n\r\n")[2])
            assert status["code"] == 14 and "max_connections=3" in status["message"], status  # UNAVAILABLE
            assert receiver.health()["http"]["refused_connections"] == 1
            # a held connection still works
            r0, w0 = held[0]
            w0.write(export_request(logs_request(["a"]).SerializeToString(), close=True))
            assert (await read_until_closed(r0, 5)).startswith(b"HTTP/1.1 200")
        finally:
            for _, w in held:
                w.close()
        # once they close, new connections are served again
        await eventually(lambda: receiver.health()["http"]["connections"] == 0, timeout=5)
        async with aiohttp.ClientSession() as s:
            url = f"http://127.0.0.1:{port}/v1/logs"
            async with s.post(url, data=logs_request(["b"]).SerializeToString(), headers=PROTOBUF) as resp:
                assert resp.status == 200
        await p.exporter().wait_for(2)


def test_the_limits_default_to_the_core_http_receivers():
    from collector_plugin_otlp.config import HttpConfig

    from collector.builtin.http.config import HttpReceiverConfig

    otlp, core = HttpConfig(), HttpReceiverConfig()
    for name in ("header_timeout", "idle_timeout", "max_connections"):
        assert getattr(otlp, name) == getattr(core, name), name
    assert HttpConfig(header_timeout="2s", idle_timeout="1m").idle_timeout == 60.0


def test_importing_the_api_does_not_import_aiohttp():
    code = "import sys, collector.api; print('aiohttp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
