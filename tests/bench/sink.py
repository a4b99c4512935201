"""A cheap OpenMeter stand-in for the benchmarks: counts events and answers 204.

    python tests/bench/sink.py --port PORT

``POST /api/v1/events`` decodes the body (orjson), records every event id and
answers 204.  ``GET /count`` returns ``{"events", "unique", "requests",
"first", "last"}`` where ``first``/``last`` are ``time.monotonic()`` of the
first and last accepted request (CLOCK_MONOTONIC is system-wide on Linux, so
the bench can compare it with its own clock).

Why not tests/support/fake_openmeter.py: the strict fake validates every
event in pure Python and keeps a record object per arrival; on a 2-core
machine that CPU is taken from the collector under test and the drain rate
would partly measure the fake.  The contract is the fake's job (e2e tests);
this sink only has to be cheap, and to prove that nothing was lost.
"""

from __future__ import annotations

import argparse
import time

import orjson
from aiohttp import web


class Sink:
    def __init__(self) -> None:
        self.events = 0
        self.requests = 0
        self.ids: set[str] = set()
        self.first: float | None = None
        self.last: float | None = None

    async def ingest(self, request: web.Request) -> web.Response:
        doc = orjson.loads(await request.read())
        events = doc if isinstance(doc, list) else [doc]
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.last = now
        self.requests += 1
        self.events += len(events)
        self.ids.update(e["id"] for e in events)
        return web.Response(status=204)

    async def count(self, request: web.Request) -> web.Response:
        body = {
            "events": self.events,
            "unique": len(self.ids),
            "requests": self.requests,
            "first": self.first,
            "last": self.last,
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    sink = Sink()
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/api/v1/events", sink.ingest)
    app.router.add_get("/count", sink.count)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
