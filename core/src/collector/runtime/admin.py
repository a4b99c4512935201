"""The admin server: /metrics, /ping, /ready, /health.

It outlives configuration reloads, so it asks a callable for the current
service rather than holding one.  With worker processes (``service.workers``
> 1) it asks each worker too, at request time: ``/metrics`` is the sum of
every process (:mod:`collector.runtime.metrics_merge`), ``/health`` lists the
workers, and ``/ready`` needs every running worker ready.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from collector.endpoints import parse_endpoint
from collector.runtime import metrics_merge
from collector.telemetry import Telemetry

if TYPE_CHECKING:
    from collector.runtime.service import Service
    from collector.runtime.workers import WorkerPool

log = logging.getLogger("collector.runtime.admin")


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data, default=str), status=status, content_type="application/json")


class AdminServer:
    def __init__(
        self,
        endpoint: str,
        telemetry: Telemetry,
        current: Callable[[], Service | None],
        *,
        workers: Callable[[], WorkerPool | None] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.telemetry = telemetry
        self.current = current
        self.workers = workers or (lambda: None)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/ping", self.ping)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/health", self.health)
        return app

    async def start(self) -> None:
        host, port = parse_endpoint(self.endpoint)
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(exc.errno, f"admin server cannot listen on {self.endpoint}: {exc.strerror}") from None
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("admin server listening on http://%s:%s", host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def metrics(self, request: web.Request) -> web.Response:
        # Queue gauges are read at scrape time (collector.telemetry): nothing to refresh first.
        registry = self.telemetry.metrics.registry
        pool = self.workers()
        if pool is not None:
            scraped = await pool.scrape()
            workers = [metrics_merge.parse(answer["metrics"]) for answer in scraped.values()]
            registry = metrics_merge.registry_of(metrics_merge.merge(registry.collect(), workers))
        body = generate_latest(registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, service: Service) -> dict[str, Any]:
        """The service's health, with the workers' when there are worker processes."""
        health = service.health()
        pool = self.workers()
        if pool is None:
            return health
        workers = pool.describe(await pool.scrape())
        health["workers"] = workers
        running = [w for w in workers.values() if w["state"] == "running"]
        # A worker being started again does not make the collector unready (the others hold the
        # port), but one that runs and is not ready (its queue refuses, say) does.
        health["ready"] = bool(health["ready"] and running and all(w["ready"] for w in running))
        some_down = len(running) < len(workers)
        if health["status"] == "ok" and (some_down or not health["ready"]):
            health["status"] = "degraded"
        return health

    async def ping(self, request: web.Request) -> web.Response:
        return web.Response(text="pong")

    async def ready(self, request: web.Request) -> web.Response:
        service = self.current()
        if service is None:
            return _json({"ready": False, "reasons": ["not started"]}, 503)
        health = await self._health(service)
        # With a coordinator, whether this replica leads its pull receivers (a standby is ready too).
        leader = {"leader": health["leader"]} if "leader" in health else {}
        if health["ready"]:
            return _json({"ready": True, **leader})
        reasons = []
        if not service.started:
            reasons.append("service is not started")
        lost = health.get("storage", {}).get("lost")
        if lost:
            reasons.append(lost)
        for kind, parts in health["components"].items():
            for cid, h in parts.items():
                if not h.get("ready", False):
                    why = (
                        h.get("reason")
                        or h.get("paused_reason")
                        or h.get("stuck_reason")
                        or ("queue refusing data" if h.get("queue", {}).get("refusing") else h.get("state"))
                    )
                    reasons.append(f"{kind.removesuffix('s')} {cid}: {why}")
        for index, worker in health.get("workers", {}).items():
            if worker["state"] == "running" and not worker["ready"]:
                reasons.append(f"worker {index}: {worker.get('reason') or _component_reasons(worker)}")
        if "workers" in health and not any(w["state"] == "running" for w in health["workers"].values()):
            reasons.append("no worker process is running")
        return _json({"ready": False, "reasons": reasons, **leader}, 503)

    async def health(self, request: web.Request) -> web.Response:
        service = self.current()
        if service is None:
            return _json({"status": "starting", "ready": False, "components": {}}, 503)
        h = await self._health(service)
        return _json(h, 200 if h["ready"] else 503)


def _component_reasons(worker: dict[str, Any]) -> str:
    """Why a worker is not ready, from its components' health."""
    out = []
    for kind, parts in worker.get("components", {}).items():
        for cid, h in parts.items():
            if not h.get("ready", False):
                refusing = h.get("queue", {}).get("refusing")
                why = h.get("reason") or ("queue refusing data" if refusing else h.get("state"))
                out.append(f"{kind.removesuffix('s')} {cid}: {why}")
    lost = (worker.get("storage") or {}).get("lost")
    if lost:
        out.append(lost)
    return "; ".join(out) or "not ready"
