"""Running the service until a signal: SIGTERM/SIGINT stop, SIGHUP reloads.

SIGHUP reload: the file (or preset) is read and validated again.  If it is
invalid, the error is logged and the running configuration stays as it is.
If it is valid, the running service stops gracefully (receivers finish the
requests they hold; senders drain for ``drain_timeout``; whatever is still
unsent stays in the durable queue) and the new one starts on the same storage
directory, so it picks the queue up where the old one left it.  Accepted
events are never lost by a reload; clients may see connection refusals for
the moment between the two (they retry).  If the new configuration fails to
start (a port taken, say), the previous configuration is started again.

The storage directory is locked (:class:`~collector.runtime.storage_lock.StorageLock`)
before anything else starts, and for as long as the process runs: a second
collector on the same directory exits with status 1 and one line naming the
PID that holds it.  A reload that moves ``storage.directory`` takes the new
directory's lock first and is refused, keeping the running configuration,
if it cannot.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from collector.config import LoadedConfig
from collector.errors import ConfigError
from collector.runtime import selftelemetry
from collector.runtime.admin import AdminServer
from collector.runtime.layout import StorageLayout
from collector.runtime.service import Service
from collector.runtime.storage_lock import StorageLock, StorageLockedError
from collector.runtime.workers import WorkerPool, WorkerStartError
from collector.telemetry import Telemetry, setup_logging

if TYPE_CHECKING:  # the runtime gets a registry; it never loads plugins itself
    from collector.plugins import Registry

log = logging.getLogger("collector.runtime.supervisor")


@dataclass
class ConfigSource:
    """Where the configuration comes from, so SIGHUP can read it again."""

    describe: str
    load: Callable[[], LoadedConfig]


class Runtime:
    def __init__(self, source: ConfigSource, loaded: LoadedConfig, registry: Registry) -> None:
        self.source = source
        self.loaded = loaded
        self.registry = registry
        self.telemetry = Telemetry()
        self.service: Service | None = None
        self.admin: AdminServer | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self._lock: StorageLock | None = None
        # service.workers > 1 (docs/operations.md, "Worker processes"): the push receivers' processes,
        # and the senders of worker shards that no worker runs any more (workers lowered)
        self.pool: WorkerPool | None = None
        self.drains: list[tuple[Service, StorageLock]] = []
        self.strict_plugins = False
        # service.telemetry.otlp (docs/operations.md); metric_source None: this process's registry
        self.selftelemetry: selftelemetry.SelfTelemetry | None = None
        self.metric_source: selftelemetry.MetricSource | None = None

    def current(self) -> Service | None:
        return self.service

    async def _start_admin(self, endpoint: str | None) -> None:
        if self.admin is not None and self.admin.endpoint == endpoint:
            return
        if self.admin is not None:
            await self.admin.stop()
            self.admin = None
        if endpoint:
            self.admin = AdminServer(endpoint, self.telemetry, self.current, workers=lambda: self.pool)
            await self.admin.start()

    async def _start_service(self, loaded: LoadedConfig) -> None:
        count = loaded.raw.service.worker_count()
        service = Service(loaded, self.registry, telemetry=self.telemetry, role="primary" if count > 1 else "all")
        await service.start()
        try:
            await self._start_drains(loaded, count)
            if count > 1:
                pool = WorkerPool(count, self.telemetry, strict_plugins=self.strict_plugins)
                await pool.start(loaded)
                self.pool = pool
        except BaseException:
            await self._stop_services()
            await service.stop()
            raise
        # Only now does /health say "started": every worker listens.
        self.service = service
        self.loaded = loaded

    async def _start_drains(self, loaded: LoadedConfig, count: int) -> None:
        """Senders for the worker shards no worker runs (left by a larger ``workers``): nothing is stranded."""
        layout = StorageLayout(loaded.raw.storage.directory)
        for index, shard in layout.worker_shards().items():
            if (count > 1 and index <= count) or not (shard.root / "exporters").is_dir():
                continue
            lock = StorageLock(shard.root, shard.lock_file)
            try:
                await asyncio.to_thread(lock.acquire)
            except (OSError, StorageLockedError) as exc:
                log.warning("worker shard %s is not drained from here: %s", shard.root, exc)
                continue
            drain = Service(loaded, self.registry, telemetry=self.telemetry, layout=shard, role="drain")
            try:
                await drain.start()
            except BaseException:
                lock.release()
                raise
            self.drains.append((drain, lock))
            log.info(
                "no worker runs shard %d (service.workers=%d): the primary process delivers what it holds",
                index,
                count,
            )

    async def _stop_services(self, timeout: float | None = None) -> None:
        """Stop the workers, the primary's service and the shard drains together (each drains in parallel)."""
        pool, self.pool = self.pool, None
        service, self.service = self.service, None
        drains, self.drains = self.drains, []
        drain_timeout = timeout if timeout is not None else self.loaded.raw.service.drain_timeout
        parts: list[Any] = [d.stop(timeout) for d, _ in drains]
        if pool is not None:
            parts.append(pool.stop(drain_timeout))
        if service is not None:
            parts.append(service.stop(timeout))
        await asyncio.gather(*parts)
        for _, lock in drains:
            lock.release()

    def request_stop(self) -> None:
        self._stop.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            self._lock = await asyncio.to_thread(_lock_storage, self.loaded)
        except (OSError, StorageLockedError) as exc:
            log.error("start-up failed: %s", exc)
            return 1
        try:
            await self._start_admin(self.loaded.raw.service.telemetry.endpoint)
            await self._restart_selftelemetry(self.loaded)  # first: the start-up logs are pushed too
            await self._start_service(self.loaded)
        except (OSError, ConfigError, WorkerStartError) as exc:
            log.error("start-up failed: %s", exc)
            await self._shutdown()
            return 2 if isinstance(exc, ConfigError) else 1
        while not self._stop.is_set():
            stop = asyncio.ensure_future(self._stop.wait())
            reload = asyncio.ensure_future(self._reload.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                await self._do_reload()
        await self._shutdown()
        return 0

    def _on_stop(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            log.warning("second %s: stopping is already under way", sig.name)
            return
        log.info("received %s: stopping gracefully", sig.name)
        self._stop.set()

    async def _do_reload(self) -> None:
        log.info("received SIGHUP: reloading configuration from %s", self.source.describe)
        try:
            new = await asyncio.to_thread(self.source.load)
        except ConfigError as exc:
            log.error("reload refused, keeping the running configuration: %s", exc)
            return
        old = self.loaded
        new_lock: StorageLock | None = None
        if _storage_root(new) != _storage_root(old):
            try:
                new_lock = await asyncio.to_thread(_lock_storage, new)
            except (OSError, StorageLockedError) as exc:
                log.error("reload refused, keeping the running configuration: %s", exc)
                return
        assert self.service is not None
        await self._stop_services()
        try:
            await self._start_admin(new.raw.service.telemetry.endpoint)
            await self._start_service(new)
            tel = new.raw.service.telemetry
            setup_logging(tel.log_level, tel.log_format)
            await self._restart_selftelemetry(new)
            log.info("configuration reloaded")
        except Exception as exc:
            log.error("the new configuration failed to start (%s); restarting the previous one", exc)
            if new_lock is not None:
                new_lock.release()
            await self._start_admin(old.raw.service.telemetry.endpoint)
            await self._start_service(old)
            await self._restart_selftelemetry(old)
            return
        if new_lock is not None:
            if self._lock is not None:
                self._lock.release()
            self._lock = new_lock

    async def _restart_selftelemetry(self, loaded: LoadedConfig | None) -> None:
        """Stop the OTLP push of our own telemetry and start the one ``loaded`` asks for; never fails the run."""
        config = loaded.raw.service.telemetry.otlp if loaded is not None else None
        try:
            self.selftelemetry = await selftelemetry.restart(
                self.selftelemetry, config, self.telemetry, self.metric_source
            )
        except Exception as exc:
            self.selftelemetry = None
            log.error("OTLP export of the collector's own telemetry not started: %s", exc)

    async def _shutdown(self) -> None:
        await self._stop_services()
        await self._restart_selftelemetry(None)
        if self.admin is not None:
            await self.admin.stop()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _storage_root(loaded: LoadedConfig) -> Path:
    return StorageLayout(loaded.raw.storage.directory).root.resolve()


def _lock_storage(loaded: LoadedConfig) -> StorageLock:
    """The storage directory's lock, taken (raises StorageLockedError naming the holder)."""
    layout = StorageLayout(loaded.raw.storage.directory)
    lock = StorageLock(layout.root, layout.lock_file)
    lock.acquire()
    return lock
