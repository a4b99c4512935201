"""The ingest baseline: a minimal aiohttp POST handler that reads the body and answers 204.

    python tests/bench/baseline_server.py --port PORT

The same aiohttp version and ``access_log=None`` as the collector's HTTP
receiver, on asyncio's default event loop (the collector runs on uvloop where
it is installed, which is one of its own optimisations; ``COLLECTOR_EVENT_LOOP=asyncio``
measures it without), and nothing else: no parsing, no validation, no queue.
What the collector adds on top of this is what the single-event ingest ratio
measures.
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(status=204)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    app = web.Application()
    app.router.add_post("/api/v1/events", handle)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=1024)


if __name__ == "__main__":
    main()
