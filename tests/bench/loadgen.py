"""HTTP load generator for the benchmarks, run as its own process.

    python tests/bench/loadgen.py --url http://127.0.0.1:PORT/api/v1/events \\
        --connections 64 --events-per-request 1 --warmup 1 --duration 8

or, bounded by count (to build a backlog)::

    python tests/bench/loadgen.py --url ... --events-per-request 100 --requests 1000

Prints one JSON object on stdout: requests and events answered 2xx *inside the
measuring window*, their rate, latency percentiles, and the non-2xx statuses.

Why not aiohttp's client: on a 2-core machine the load generator shares the
CPU with the server under test, and aiohttp's client spends ~3x more CPU per
request than this hand-written HTTP/1.1 keep-alive client (one request in
flight per connection, no pipelining).  The lighter the client, the more of
the machine the server gets, for the baseline and the collector alike.  The
server sees ordinary requests: ``Content-Length`` bodies, keep-alive.

Every event carries a unique id (``<run>-<request>-<index>``), so a sink can
check that nothing was lost or duplicated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from urllib.parse import urlsplit

import orjson
from harness import tree_cpu_seconds

REQ_WIDTH = 10  # digits of the request number inside each event id


def event_template(run: str, index: int) -> dict[str, object]:
    """A typical usage event (~250 bytes); ``@REQ@`` is replaced per request."""
    return {
        "specversion": "1.0",
        "id": f"{run}-@REQ@-{index:03d}",
        "source": "bench/api-gateway",
        "type": "api.request",
        "subject": f"customer-{index % 97}",
        "time": "2024-05-01T12:00:00.000Z",
        "data": {"route": "/v1/chat/completions", "tokens": 100 + index, "model": "m-7b"},
    }


def body_template(run: str, events: int) -> tuple[bytes, str]:
    """(body with ``@REQ@`` placeholders, content type) for one request."""
    if events == 1:
        return orjson.dumps(event_template(run, 0)), "application/cloudevents+json"
    return orjson.dumps([event_template(run, i) for i in range(events)]), "application/cloudevents-batch+json"


class _Stats:
    def __init__(self) -> None:
        self.ok = 0
        self.ok_in_window = 0
        self.statuses: dict[int, int] = {}
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.window_start = 0.0
        self.window_end = float("inf")


class _Conn(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._parse()

    def _parse(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buf[:end]).split(b"\r\n")
        status = int(head[0].split(b" ", 2)[1])
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        total = end + 4 + length
        if len(self.buf) < total:
            return
        del self.buf[:total]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result(status)

    async def request(self, data: bytes) -> int:
        assert self.transport is not None
        if self.closed:
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter


async def run(args: argparse.Namespace) -> dict[str, object]:
    parts = urlsplit(args.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    template, content_type = body_template(args.run, args.events_per_request)
    head = (
        f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(template) + (REQ_WIDTH - 5) * args.events_per_request}\r\n\r\n"
    ).encode()
    stats = _Stats()
    loop = asyncio.get_running_loop()
    counter = 0
    budget = args.requests  # None: bounded by time
    started = time.perf_counter()
    cpu0 = time.process_time()
    stats.window_start = started + args.warmup
    stats.window_end = stats.window_start + args.duration if budget is None else float("inf")
    hard_stop = started + args.max_time

    async def worker() -> None:
        nonlocal counter, budget
        _, conn = await loop.create_connection(_Conn, host, port)
        try:
            while True:
                now = time.perf_counter()
                if now >= stats.window_end or now >= hard_stop:
                    return
                if budget is not None:
                    if budget <= 0:
                        return
                    budget -= 1
                counter += 1
                body = template.replace(b"@REQ@", str(counter).zfill(REQ_WIDTH).encode())
                t0 = time.perf_counter()
                try:
                    status = await conn.request(head + body)
                except ConnectionError as exc:
                    stats.errors.append(str(exc))
                    return
                t1 = time.perf_counter()
                stats.statuses[status] = stats.statuses.get(status, 0) + 1
                if 200 <= status < 300:
                    stats.ok += 1
                    # A request counts for the window when it completes inside it.
                    if stats.window_start <= t1 < stats.window_end:
                        stats.ok_in_window += 1
                        stats.latencies.append(t1 - t0)
                elif status == 503:
                    await asyncio.sleep(0.05)  # backpressure: the bench should not spin
        finally:
            if conn.transport is not None:
                conn.transport.close()

    # The server's CPU over exactly the window (its process tree: worker
    # processes included), read at the window's edges: CPU per acknowledged
    # event does not depend on the machine's size or on other load.
    window_cpu: list[float] = []
    if args.cpu_pid and budget is None:
        for edge in (stats.window_start, stats.window_end):
            loop.call_at(loop.time() + (edge - started), lambda: window_cpu.append(tree_cpu_seconds(args.cpu_pid)))
    workers = [asyncio.ensure_future(worker()) for _ in range(args.connections)]
    await asyncio.gather(*workers, return_exceptions=False)
    finished = time.perf_counter()
    if len(window_cpu) == 1:  # the last request ended before the window's end timer ran
        window_cpu.append(tree_cpu_seconds(args.cpu_pid))
    if budget is None:  # time-bounded: the window is the measure
        window = min(stats.window_end, finished) - stats.window_start
        ok = stats.ok_in_window
    else:  # count-bounded: everything counts
        window = finished - started
        ok = stats.ok
        stats.latencies = stats.latencies or []
    lat = sorted(stats.latencies)

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3, 3) if lat else None

    return {
        "connections": args.connections,
        "events_per_request": args.events_per_request,
        "window_s": round(window, 3),
        "requests_ok": ok,
        "events_ok": ok * args.events_per_request,
        "requests_per_s": ok / window if window > 0 else 0.0,
        "events_per_s": ok * args.events_per_request / window if window > 0 else 0.0,
        "latency_ms": {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0)},
        "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
        "total_requests_ok": stats.ok,
        **(
            {
                "server_cpu_window_s": round(window_cpu[1] - window_cpu[0], 3),
                "server_cpu_us_per_request": round((window_cpu[1] - window_cpu[0]) / ok * 1e6, 1) if ok else None,
                "server_cpu_us_per_event": (
                    round((window_cpu[1] - window_cpu[0]) / (ok * args.events_per_request) * 1e6, 2) if ok else None
                ),
            }
            if len(window_cpu) == 2
            else {}
        ),
        "loadgen_cpu_s": round(time.process_time() - cpu0, 3),
        "elapsed_s": round(finished - started, 3),
        "errors": stats.errors[:5],
        "error_count": len(stats.errors),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="HTTP/1.1 keep-alive load generator (one JSON result on stdout).")
    p.add_argument("--url", required=True)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--events-per-request", type=int, default=1)
    p.add_argument("--warmup", type=float, default=1.0, help="seconds before the window (time-bounded mode)")
    p.add_argument("--duration", type=float, default=8.0, help="measuring window, seconds")
    p.add_argument("--requests", type=int, default=None, help="send this many requests, then stop (count mode)")
    p.add_argument("--max-time", type=float, default=120.0, help="hard limit, seconds, whatever the mode")
    p.add_argument(
        "--cpu-pid", type=int, default=None, help="read this process tree's CPU at the window's edges (time mode)"
    )
    p.add_argument("--run", default="r" + str(int(time.time() * 1000) % 10**9), help="id prefix of this run")
    args = p.parse_args(argv)
    if args.requests is not None:
        args.warmup = 0.0
    result = asyncio.run(run(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
