"""A worker process: the push receivers on a shared port, committing to the worker's own shard.

Started by the primary (:mod:`collector.runtime.workers`) as
``python -m collector.runtime.worker`` with one end of a socket pair whose
descriptor is in ``COLLECTOR_WORKER_FD``.  Over it, one JSON object per line:

primary -> worker
    ``{"op": "start", "index": n, "text": yaml, "source": s, "strict": bool}`` (first line),
    ``{"op": "scrape", "id": k}``, ``{"op": "stop"}``
worker -> primary
    ``{"op": "ready", "pid": p, "ports": {receiver: port}}`` or ``{"op": "failed", "error": msg}``,
    ``{"op": "scraped", "id": k, "metrics": text, "health": {...}}``

The worker loads the configuration from the primary's text with its own
(inherited) environment, so both run the same configuration, and runs a
:class:`~collector.runtime.service.Service` in the ``worker`` role on
``<storage>/workers/<n>/``, which it locks like any collector locks its
storage.  SIGTERM, SIGINT, a ``stop`` line or the primary's end (the socket
closes) stop it gracefully: receivers finish the requests they hold, senders
drain for ``drain_timeout``, whatever is left stays in the shard for the next
start.  SIGHUP is ignored: reloads are the primary's to order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from typing import Any

import orjson

log = logging.getLogger("collector.runtime.worker")

FD_VARIABLE = "COLLECTOR_WORKER_FD"


class _WorkerTag(logging.Filter):
    """Every log line of worker ``n`` says ``worker=n``."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        return True


def _tag_logs(index: int) -> None:
    for handler in logging.getLogger("collector").handlers:
        handler.addFilter(_WorkerTag(index))


async def _send(writer: asyncio.StreamWriter, message: dict[str, Any]) -> None:
    writer.write(orjson.dumps(message, default=str) + b"\n")
    await writer.drain()


async def run(sock: socket.socket) -> int:
    from prometheus_client import generate_latest

    from collector.config import Settings, load_config
    from collector.plugins import PluginSelection, load_registry
    from collector.runtime import selftelemetry
    from collector.runtime.layout import StorageLayout
    from collector.runtime.service import Service
    from collector.runtime.storage_lock import StorageLock
    from collector.telemetry import Telemetry, setup_logging

    reader, writer = await asyncio.open_unix_connection(sock=sock)
    first = await reader.readline()
    if not first:
        return 1
    start = orjson.loads(first)
    index = int(start["index"])
    env = Settings()
    setup_logging(env.log_level or "info", env.log_format or "auto")
    _tag_logs(index)
    lock: StorageLock | None = None
    service: Service | None = None
    pusher: selftelemetry.SelfTelemetry | None = None
    try:
        registry = load_registry(PluginSelection.from_env(strict=bool(start.get("strict"))))
        loaded = load_config(start["text"], registry, source=start["source"], settings=env)
        tel = loaded.raw.service.telemetry
        setup_logging(tel.log_level, tel.log_format)
        _tag_logs(index)
        layout = StorageLayout(loaded.raw.storage.directory).for_worker(index)
        layout.root.mkdir(parents=True, exist_ok=True)
        lock = StorageLock(layout.root, layout.lock_file)
        await asyncio.to_thread(lock.acquire)
        telemetry = Telemetry()
        service = Service(loaded, registry, telemetry=telemetry, layout=layout, role="worker")
        await service.start()
        # Each worker pushes its own telemetry (its own service.instance.id): the backend adds them up.
        try:
            pusher = await selftelemetry.restart(None, tel.otlp, telemetry)
        except Exception as exc:
            log.error("OTLP export of worker %d's own telemetry not started: %s", index, exc)
    except Exception as exc:
        log.error("worker %d failed to start: %s", index, exc)
        if service is not None:
            await service.stop(5.0)
        if lock is not None:
            lock.release()
        await _send(writer, {"op": "failed", "error": str(exc)})
        return 1

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(
        signal.SIGHUP, lambda: log.info("worker %d: SIGHUP ignored (the primary process reloads)", index)
    )
    ports = {rid: rec.health().get("port") for rid, rec in service.receivers.items()}
    await _send(writer, {"op": "ready", "pid": os.getpid(), "ports": ports})

    async def serve_control() -> None:
        assert service is not None
        while True:
            line = await reader.readline()
            if not line:  # the primary is gone: stop rather than run unsupervised
                log.warning("worker %d: the primary process went away; stopping", index)
                break
            msg = orjson.loads(line)
            if msg.get("op") == "stop":
                break
            if msg.get("op") == "scrape":
                text = generate_latest(service.telemetry.metrics.registry).decode()
                health = service.health()
                await _send(writer, {"op": "scraped", "id": msg.get("id"), "metrics": text, "health": health})
        stop.set()

    control = asyncio.create_task(serve_control())
    await stop.wait()
    log.info("worker %d stopping", index)
    try:
        await service.stop()
        await selftelemetry.restart(pusher, None, service.telemetry)
    finally:
        control.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await control
        lock.release()
        writer.close()
    return 0


def main() -> int:
    fd = os.environ.get(FD_VARIABLE)
    if not fd:
        print(
            "collector.runtime.worker is started by `collector run` (service.workers > 1), not by hand",
            file=sys.stderr,
        )
        return 2
    from collector.config import Settings
    from collector.runtime import eventloop

    sock = socket.socket(fileno=int(fd))
    settings = Settings()
    return eventloop.run(run(sock), settings.event_loop, settings.gil_switch_ms)


if __name__ == "__main__":
    sys.exit(main())
