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
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

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
from collector.errors import ConfigError
from collector.mapping import registry_functions
from collector.runtime.deadletters import DeadLetterStore, LazyDeadLetters
from collector.runtime.layout import StorageLayout, deadletters_in
from collector.runtime.orphans import ExporterContents, find_orphans
from collector.runtime.pipeline import Pipeline, ReceiverFanout
from collector.runtime.queue import BatchQueue
from collector.runtime.sender import ExporterRunner
from collector.runtime.storage_watch import StorageWatch, WatchedQueue
from collector.telemetry import Telemetry

if TYPE_CHECKING:  # the runtime gets a registry; it never loads plugins itself
    from collector.plugins import Registry

log = logging.getLogger("collector.runtime.service")

#: What a service runs (docs/operations.md, "Worker processes"):
#: ``all`` everything (one process, ``service.workers: 1``);
#: ``primary`` the receivers that are not worker-safe (pull receivers), the
#: coordinator, and every exporter on the root storage (so queues left by a
#: single-process run still drain);
#: ``worker`` the worker-safe (push) receivers, their pipelines and exporters,
#: on the worker's shard, listening with SO_REUSEPORT;
#: ``drain`` only the exporters' senders, on a shard no worker runs any more.
Role = Literal["all", "primary", "worker", "drain"]


class Service:
    """One running configuration, and the one place that builds its parts.

    ``collector run`` builds everything with :meth:`build`; the other commands
    build only what they need through the same methods (``dlq replay``:
    :meth:`build_exporter_runner`; ``map``: :meth:`build_processors`;
    ``backfill``: a whole service on :meth:`StorageLayout.for_backfill`), so a
    component gets the same context and storage directory whichever command
    builds it.
    """

    def __init__(
        self,
        loaded: LoadedConfig,
        registry: Registry,
        *,
        telemetry: Telemetry | None = None,
        clock: Clock | None = None,
        layout: StorageLayout | None = None,
        role: Role = "all",
    ) -> None:
        self.loaded = loaded
        self.role: Role = role
        self.registry = registry
        # Components get the mapping functions, not the registry (collector.components.ComponentContext).
        self._functions = registry_functions(registry)
        self.telemetry = telemetry or Telemetry()
        self.telemetry.redactor.add(*loaded.secrets())
        self.clock = clock or SystemClock()
        self.layout = layout or StorageLayout(loaded.raw.storage.directory)
        self.storage = self.layout.root
        self.receivers: dict[str, Receiver[Any]] = {}
        self.processors: dict[tuple[str, str], Processor[Any]] = {}  # (pipeline, id)
        self.exporters: dict[str, ExporterRunner] = {}
        self.coordinator: Coordinator[Any] | None = None
        self.pipelines: dict[str, Pipeline] = {}
        self.started = False
        self._stopped = False
        self.started_at: float | None = None
        #: notices the storage directory deleted or replaced while running (intake then refuses)
        self.storage_watch = StorageWatch(self.storage)
        #: exporter directories no configured exporter owns, found at start (collector.runtime.orphans)
        self.orphans: list[ExporterContents] = []

    # -- assembly -----------------------------------------------------------------

    def context(self, kind: str, cid: str, *, pipeline: str | None = None) -> ComponentContext:
        """What a component's factory gets: its id, its directory in the layout, the shared services."""
        storage_dir = self.layout.component_dir(kind, cid, pipeline)
        return ComponentContext(
            id=cid,
            kind=kind,
            storage_dir=storage_dir,
            telemetry=self.telemetry,
            functions=self._functions,
            clock=self.clock,
            coordinator=self.coordinator,
            dead_letters=LazyDeadLetters(deadletters_in(storage_dir)) if kind == "receiver" else None,
            shared_listeners=self.role == "worker",
        )

    def _build(self, kind: str, cid: str, *, pipeline: str | None = None) -> Component[Any]:
        cc = self.loaded.get(kind, cid)
        spec = self.registry.component(cc.kind, cc.type)
        try:
            component = spec.factory(self.context(kind, cid, pipeline=pipeline), cc.config)
        except ConfigError as exc:
            raise ConfigError(exc.message, exc.path or f"{kind}s.{cid}") from None
        if not isinstance(component, Component):
            raise ConfigError(f"factory of {kind} type {cc.type!r} returned {component!r}", f"{kind}s.{cid}")
        return component

    def _queue(self, eid: str, config: ExporterConfig) -> BatchQueue:
        """The exporter's queue; its intake refuses once the storage directory is lost."""
        return WatchedQueue(self.build_queue(eid, config), self.storage_watch)

    def build_queue(self, eid: str, config: ExporterConfig) -> BatchQueue:
        """The queue the configuration gives exporter ``eid`` (not opened); ``collector queue drain`` fills it."""
        q = config.queue
        if q.kind == "memory":
            from collector.runtime.queue.memory import MemoryQueue

            return MemoryQueue(max_bytes=q.max_bytes, clock=self.clock)
        from collector.runtime.queue.sqlite import DurableQueue

        return DurableQueue(
            self.layout.exporter_queue(eid),
            max_bytes=q.max_bytes,
            durability=q.durability,
            commit_wait_ms=q.commit_wait_ms,
            commit_max_events=q.commit_max_events,
            min_free_bytes=q.min_free_bytes,
            clock=self.clock,
        )

    def build_exporter(self, eid: str) -> Exporter[Any]:
        """The exporter ``eid`` alone, not started (``collector map`` asks it for its event rules)."""
        exporter = self._build("exporter", eid)
        assert isinstance(exporter, Exporter)
        return exporter

    def build_exporter_runner(self, eid: str, *, replay: bool = False) -> ExporterRunner:
        """The exporter ``eid`` with its queue, dead letters and sender (not started).

        ``replay`` is for ``collector dlq replay``: an unbounded memory queue
        that the caller fills, batches sent as soon as they are formed, and
        events rejected again dead-lettered into the same store.
        """
        exporter = self._build("exporter", eid)
        assert isinstance(exporter, Exporter)
        cfg = exporter.config
        if not isinstance(cfg, ExporterConfig):
            raise ConfigError("exporter config models must subclass ExporterConfig", f"exporters.{eid}")
        if replay:
            from collector.runtime.queue.memory import MemoryQueue

            cfg = cfg.model_copy(update={"batch": cfg.batch.model_copy(update={"period": 0.0})})
            queue: BatchQueue = MemoryQueue(max_bytes=1 << 40)
        else:
            queue = self._queue(eid, cfg)
        return ExporterRunner(
            eid,
            exporter,
            cfg,
            queue,
            # Dead letters keep the queue's reserve: they must not fill the disk the queue drains on.
            DeadLetterStore(self.layout.exporter_deadletters(eid), min_free_bytes=cfg.queue.min_free_bytes),
            self.telemetry.metrics,
            clock=self.clock,
        )

    def build_processors(self, pipeline: str) -> list[Processor[Any]]:
        """The processors of ``pipeline``, in order, each on its per-pipeline directory (not started)."""
        out = []
        for pid in self.loaded.raw.service.pipelines[pipeline].processors:
            proc = self._build("processor", pid, pipeline=pipeline)
            assert isinstance(proc, Processor)
            out.append(proc)
        return out

    def receiver_runs_here(self, rid: str) -> bool:
        """Whether receiver ``rid`` runs in this service's role (worker-safe ones in workers, the rest once)."""
        if self.role == "all":
            return True
        if self.role == "drain":
            return False
        component = self.loaded.get("receiver", rid)
        spec = self.registry.component("receiver", component.type)
        # A worker-safe type may still need one process for this configuration (its reason is
        # among the configuration's warnings): it then runs once, in the primary, like a pull receiver.
        safe = spec.single_process_reason(component.config) is None
        return safe if self.role == "worker" else not safe

    def build(self) -> None:
        """Instantiate every component a pipeline uses in this role (no I/O beyond mkdir)."""
        raw = self.loaded.raw
        self.storage.mkdir(parents=True, exist_ok=True)
        # First: pull receivers ask it who leads.
        if raw.service.coordinator and self.role in ("all", "primary"):
            coord = self._build("coordinator", raw.service.coordinator)
            assert isinstance(coord, Coordinator)
            self.coordinator = coord
            # Read at scrape time, so it is never stale between pull windows (docs/operations.md, "Metrics").
            gauge = self.telemetry.metrics.coordinator_leader.labels(coordinator=coord.id)
            gauge.set_function(lambda: 1.0 if coord.is_leader() else 0.0)
        for name, pipe in raw.service.pipelines.items():
            if self.role == "worker" and not any(self.receiver_runs_here(r) for r in pipe.receivers):
                continue
            runners = []
            for eid in pipe.exporters:
                if eid not in self.exporters:
                    self.exporters[eid] = self.build_exporter_runner(eid)
                runners.append(self.exporters[eid])
            if self.role == "drain":
                continue
            procs = self.build_processors(name)
            for pid, proc in zip(pipe.processors, procs, strict=True):
                self.processors[(name, pid)] = proc
            self.pipelines[name] = Pipeline(name, procs, runners)
        for name in self.pipelines:
            for rid in raw.service.pipelines[name].receivers:
                if rid not in self.receivers and self.receiver_runs_here(rid):
                    rec = self._build("receiver", rid)
                    assert isinstance(rec, Receiver)
                    self.receivers[rid] = rec
        for rid, rec in self.receivers.items():
            feeds = [self.pipelines[n] for n, p in raw.service.pipelines.items() if rid in p.receivers]
            rec.bind(ReceiverFanout(rid, feeds, self.telemetry.metrics))

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        if not self.pipelines and not self.exporters:
            self.build()
        t0 = time.monotonic()
        try:
            if self.coordinator:
                await self.coordinator.start()
            for eid, runner in self.exporters.items():
                await runner.start()
                log.debug("exporter %s started", eid)
            await asyncio.to_thread(self._report_orphans)
            self.storage_watch.files = self._watched_files()
            self.storage_watch.start()
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
        if self.role == "drain":  # a shard's senders inside the primary process: not the collector's start
            log.info("draining %s: exporters %s", self.storage, ", ".join(self.exporters) or "none")
            return
        self.telemetry.metrics.up.set(1)
        self.telemetry.metrics.start_time.set(self.started_at)
        log.info(
            "collector %s: %d pipeline(s), receivers %s, exporters %s (%.0f ms)",
            "started" if self.role == "all" else f"{self.role} started",
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
        self.storage_watch.stop()
        if self.role in ("all", "primary"):
            self.telemetry.metrics.up.set(0)
        self.started = False
        log.info("collector stopped (%.0f ms)", (time.monotonic() - t0) * 1000)

    async def _stop_runner(self, eid: str, runner: ExporterRunner, timeout: float) -> None:
        try:
            await runner.shutdown(timeout)
        except Exception:
            log.exception("exporter %s did not stop cleanly", eid)

    def _watched_files(self) -> list[Path]:
        """The databases the exporters keep open: replacing one loses what is written to it."""
        files: list[Path] = []
        for runner in self.exporters.values():
            db_path = getattr(runner.queue, "db_path", None)
            if db_path is not None:
                files.append(db_path)
            files.append(runner.deadletters.path)
        return files

    def _report_orphans(self) -> None:
        """Warn about exporter directories no running exporter owns, with what they hold (blocking)."""
        self.orphans = find_orphans(self.layout, self.exporters)
        gauge = self.telemetry.metrics.orphaned_queue_events
        gauge.clear()
        targets = list(self.exporters)
        to = targets[0] if len(targets) == 1 else "<exporter id>"
        for orphan in self.orphans:
            gauge.labels(queue=orphan.name).set(orphan.queue_events)
            held = (
                f"cannot be read ({orphan.error})"
                if orphan.error
                else f"holds {orphan.queue_events} event(s) in its queue and {orphan.dead_letters} dead letter(s)"
            )
            log.warning(
                "exporter directory exporters/%s belongs to no configured exporter (renamed or removed?) and %s; "
                "nothing delivers them. Stop the collector and move them with "
                '`collector queue drain %s --to %s` (docs/operations.md, "Renamed or removed exporters")',
                orphan.name,
                held,
                orphan.name,
                to,
                extra={"orphaned": str(orphan.path)},
            )

    # -- health -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        receivers = {rid: r.health() for rid, r in self.receivers.items()}
        processors = {f"{pipe}/{pid}": p.health() for (pipe, pid), p in self.processors.items()}
        exporters = {eid: r.health() for eid, r in self.exporters.items()}
        parts = [*receivers.values(), *processors.values(), *exporters.values()]
        coordinator = {self.coordinator.id: self.coordinator.health()} if self.coordinator else {}
        # A standby replica is ready (it is waiting to take over); a coordinator that cannot
        # reach or may not use its lock (401/403) is not, so the problem shows in the pod status.
        parts.extend(coordinator.values())
        storage = self.storage_watch.health()
        ready = self.started and storage["lost"] is None and all(p.get("ready", False) for p in parts)
        out: dict[str, Any] = {
            "status": "ok" if ready else ("starting" if not self.started else "degraded"),
            "ready": ready,
            "started_at": self.started_at,
            "storage": storage,
            "components": {"receivers": receivers, "processors": processors, "exporters": exporters},
        }
        if self.orphans:
            out["orphaned"] = {o.name: o.as_dict() for o in self.orphans}
        if self.coordinator:
            out["components"]["coordinator"] = coordinator
            out["leader"] = self.coordinator.is_leader()
        return out
