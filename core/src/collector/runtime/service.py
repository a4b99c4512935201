"""The service: builds pipelines from a validated configuration and runs them.

Start order is exporters (queue, dead letters, sender thread), then processors,
then receivers, so nothing is accepted before it has somewhere to go.  Stop
order is the reverse: receivers stop taking data and finish what they hold,
then processors, then each sender drains for what is left of the drain
timeout; anything still unsent stays in the durable queue for next time.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any

from collector.clock import Clock, SystemClock
from collector.components import (
    Component,
    ComponentContext,
    Coordinator,
    Exporter,
    ExporterConfig,
    Processor,
    Receiver,
)
from collector.config import LoadedConfig
from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.sender import ExporterRunner
from collector.errors import ConfigError
from collector.runtime.pipeline import Pipeline, ReceiverFanout
from collector.plugins import Registry
from collector.runtime.queue import BatchQueue
from collector.telemetry import Telemetry

log = logging.getLogger("collector.runtime.service")


def safe_name(component_id: str) -> str:
    """A component id as a directory name (``openmeter/eu`` -> ``openmeter__eu``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", component_id.replace("/", "__"))


def exporter_dir(storage: Path, exporter_id: str) -> Path:
    return storage / "exporters" / safe_name(exporter_id)


def deadletter_path(storage: Path, exporter_id: str) -> Path:
    return exporter_dir(storage, exporter_id) / "deadletter.sqlite"


def make_queue(storage: Path, exporter_id: str, config: ExporterConfig) -> BatchQueue:
    q = config.queue
    if q.kind == "memory":
        from collector.runtime.queue.memory import MemoryQueue

        return MemoryQueue(max_bytes=q.max_bytes)
    from collector.runtime.queue.sqlite import DurableQueue

    return DurableQueue(
        exporter_dir(storage, exporter_id) / "queue",
        max_bytes=q.max_bytes,
        durability=q.durability,
        commit_wait_ms=q.commit_wait_ms,
        commit_max_events=q.commit_max_events,
        min_free_bytes=q.min_free_bytes,
    )


class Service:
    """One running configuration."""

    def __init__(
        self,
        loaded: LoadedConfig,
        registry: Registry,
        *,
        telemetry: Telemetry | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.loaded = loaded
        self.registry = registry
        self.telemetry = telemetry or Telemetry()
        self.clock = clock or SystemClock()
        self.storage = loaded.raw.storage.directory
        self.receivers: dict[str, Receiver[Any]] = {}
        self.processors: dict[tuple[str, str], Processor[Any]] = {}  # (pipeline, id)
        self.exporters: dict[str, ExporterRunner] = {}
        self.coordinator: Coordinator[Any] | None = None
        self.pipelines: dict[str, Pipeline] = {}
        self.started = False
        self._stopped = False
        self.started_at: float | None = None

    # -- assembly -----------------------------------------------------------------

    def _context(self, kind: str, cid: str, subdir: Path) -> ComponentContext:
        return ComponentContext(
            id=cid,
            kind=kind,
            storage_dir=subdir,
            telemetry=self.telemetry,
            registry=self.registry,
            clock=self.clock,
            coordinator=self.coordinator,
        )

    def _build(self, kind: str, cid: str, subdir: Path) -> Component[Any]:
        cc = self.loaded.get(kind, cid)
        spec = self.registry.component(cc.kind, cc.type)
        try:
            component = spec.factory(self._context(kind, cid, subdir), cc.config)
        except ConfigError as exc:
            raise ConfigError(exc.message, exc.path or f"{kind}s.{cid}") from None
        if not isinstance(component, Component):
            raise ConfigError(f"factory of {kind} type {cc.type!r} returned {component!r}", f"{kind}s.{cid}")
        return component

    def build(self) -> None:
        """Instantiate every component a pipeline uses (no I/O beyond mkdir)."""
        raw = self.loaded.raw
        self.storage.mkdir(parents=True, exist_ok=True)
        # First: pull receivers ask it who leads.
        if raw.service.coordinator:
            coord = self._build(
                "coordinator",
                raw.service.coordinator,
                self.storage / "coordinators" / safe_name(raw.service.coordinator),
            )
            assert isinstance(coord, Coordinator)
            self.coordinator = coord
        for name, pipe in raw.service.pipelines.items():
            runners = []
            for eid in pipe.exporters:
                if eid not in self.exporters:
                    exporter = self._build("exporter", eid, exporter_dir(self.storage, eid))
                    assert isinstance(exporter, Exporter)
                    cfg = exporter.config
                    if not isinstance(cfg, ExporterConfig):
                        raise ConfigError("exporter config models must subclass ExporterConfig", f"exporters.{eid}")
                    self.exporters[eid] = ExporterRunner(
                        eid,
                        exporter,
                        cfg,
                        make_queue(self.storage, eid, cfg),
                        DeadLetterStore(deadletter_path(self.storage, eid)),
                        self.telemetry.metrics,
                    )
                runners.append(self.exporters[eid])
            procs = []
            for pid in pipe.processors:
                proc = self._build("processor", pid, self.storage / "processors" / safe_name(pid) / name)
                assert isinstance(proc, Processor)
                self.processors[(name, pid)] = proc
                procs.append(proc)
            self.pipelines[name] = Pipeline(name, procs, runners)
        for pipe in raw.service.pipelines.values():
            for rid in pipe.receivers:
                if rid not in self.receivers:
                    rec = self._build("receiver", rid, self.storage / "receivers" / safe_name(rid))
                    assert isinstance(rec, Receiver)
                    self.receivers[rid] = rec
        for rid, rec in self.receivers.items():
            feeds = [self.pipelines[n] for n, p in raw.service.pipelines.items() if rid in p.receivers]
            rec.bind(ReceiverFanout(rid, feeds, self.telemetry.metrics))

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        if not self.pipelines:
            self.build()
        t0 = time.monotonic()
        try:
            if self.coordinator:
                await self.coordinator.start()
            for eid, runner in self.exporters.items():
                await runner.start()
                log.debug("exporter %s started", eid)
            for proc in self.processors.values():
                await proc.start()
            for rid, rec in self.receivers.items():
                await rec.start()
                log.debug("receiver %s started", rid)
        except BaseException:
            log.error("start-up failed; stopping what had started")
            await self.stop(5.0)
            raise
        self.started = True
        self.started_at = time.time()
        self.telemetry.metrics.up.set(1)
        self.telemetry.metrics.start_time.set(self.started_at)
        log.info(
            "collector started: %d pipeline(s), receivers %s, exporters %s (%.0f ms)",
            len(self.pipelines),
            ", ".join(self.receivers) or "none",
            ", ".join(self.exporters) or "none",
            (time.monotonic() - t0) * 1000,
            extra={"storage": str(self.storage)},
        )

    async def stop(self, timeout: float | None = None) -> None:
        """Graceful stop within ``timeout`` seconds (default ``service.drain_timeout``)."""
        if self._stopped:
            return
        self._stopped = True
        timeout = timeout if timeout is not None else self.loaded.raw.service.drain_timeout
        deadline = time.monotonic() + timeout
        t0 = time.monotonic()

        def left(share: float = 1.0) -> float:
            return max(0.1, (deadline - time.monotonic()) * share)

        # Receivers get a third of the budget: they stop intake and finish the
        # requests already being committed; senders get the rest to drain.
        await asyncio.gather(*(r.shutdown(left(1 / 3)) for r in self.receivers.values()))
        await asyncio.gather(*(p.shutdown(left(1 / 3)) for p in self.processors.values()))
        await asyncio.gather(*(self._stop_runner(eid, r, left()) for eid, r in self.exporters.items()))
        if self.coordinator:
            await self.coordinator.shutdown(left())
        self.telemetry.metrics.up.set(0)
        self.started = False
        log.info("collector stopped (%.0f ms)", (time.monotonic() - t0) * 1000)

    async def _stop_runner(self, eid: str, runner: ExporterRunner, timeout: float) -> None:
        try:
            await runner.shutdown(timeout)
        except Exception:
            log.exception("exporter %s did not stop cleanly", eid)

    # -- health -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        receivers = {rid: r.health() for rid, r in self.receivers.items()}
        processors = {f"{pipe}/{pid}": p.health() for (pipe, pid), p in self.processors.items()}
        exporters = {eid: r.health() for eid, r in self.exporters.items()}
        parts = [*receivers.values(), *processors.values(), *exporters.values()]
        ready = self.started and all(p.get("ready", False) for p in parts)
        out: dict[str, Any] = {
            "status": "ok" if ready else ("starting" if not self.started else "degraded"),
            "ready": ready,
            "started_at": self.started_at,
            "components": {"receivers": receivers, "processors": processors, "exporters": exporters},
        }
        if self.coordinator:
            out["components"]["coordinator"] = {self.coordinator.id: self.coordinator.health()}
        return out
