"""Worker processes for the push receivers (``service.workers`` > 1; docs/operations.md, "Worker processes").

One Python process is bound to one core by the GIL, and a push receiver's
work (HTTP, parsing, validation) is CPU.  With ``workers: N`` the primary
process starts N workers (:mod:`collector.runtime.worker`); each runs the
push receivers on the same ports (SO_REUSEPORT: the kernel spreads new
connections over them) and commits to its own queue shard
(``<storage>/workers/<n>/``), drained by its own senders, so nothing on the
hot path is shared between processes.  The primary keeps what must run once
(pull receivers, the coordinator), drains its own queue, and serves the admin
endpoints for all: ``/metrics`` sums every process
(:mod:`collector.runtime.metrics_merge`), ``/health`` and ``/ready`` include
every worker.

A worker that dies is started again on the same shard (its committed events
are there) after a back-off that grows while it keeps dying.  A stop (and a
reload, which stops and starts everything) asks every worker to drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from collector.runtime.worker import FD_VARIABLE

if TYPE_CHECKING:
    from collector.config import LoadedConfig
    from collector.telemetry import Telemetry

log = logging.getLogger("collector.runtime.workers")

#: How long a worker may take to start (import, open its shard, listen).
START_TIMEOUT_S = 60.0
#: How long the primary waits for a worker's scrape answer.
SCRAPE_TIMEOUT_S = 5.0
_RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# A worker that ran this long before dying starts the back-off from the beginning.
_STABLE_AFTER_S = 60.0


class WorkerStartError(Exception):
    """A worker could not start (its error is in the message)."""


@dataclass
class Worker:
    """The primary's handle on one worker process."""

    index: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    state: str = "starting"  # starting, running, stopping, stopped, restarting
    restarts: int = 0
    started_at: float = 0.0
    ports: dict[str, Any] = field(default_factory=dict)
    last_exit: int | None = None
    _ready: asyncio.Future[dict[str, Any]] | None = None
    _replies: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    _reader_task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def send(self, message: dict[str, Any]) -> None:
        if self.writer is None or self.writer.is_closing():
            raise ConnectionError(f"worker {self.index} is not connected")
        self.writer.write(orjson.dumps(message) + b"\n")
        await self.writer.drain()


class WorkerPool:
    """Starts, watches, scrapes, reloads and stops the worker processes."""

    def __init__(self, count: int, telemetry: Telemetry, *, strict_plugins: bool = False) -> None:
        self.count = count
        self.telemetry = telemetry
        self.strict_plugins = strict_plugins
        self.workers: dict[int, Worker] = {}
        self._loaded: LoadedConfig | None = None
        self._ids = itertools.count(1)
        self._watchers: set[asyncio.Task[None]] = set()
        self._closing = False
        self._restarts = telemetry.meter.counter(
            "worker_restarts", "Worker processes started again after they died.", ["worker"]
        )
        self._up = telemetry.meter.gauge("workers_running", "Worker processes serving the push receivers.")

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, loaded: LoadedConfig) -> None:
        """Start every worker and wait until each listens; on any failure stop them all and raise."""
        self._loaded = loaded
        self._closing = False
        results = await asyncio.gather(
            *(self._start_worker(Worker(i)) for i in range(1, self.count + 1)), return_exceptions=True
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        if not failures:
            try:
                self._check_ports()
            except WorkerStartError as exc:
                failures.append(exc)
        if failures:
            await self.stop(10.0)
            raise WorkerStartError(str(failures[0]))
        for index in self.workers:
            watcher = asyncio.create_task(self._watch(index))
            self._watchers.add(watcher)
            watcher.add_done_callback(self._watchers.discard)
        log.info(
            "%d worker processes serve the push receivers (pids %s)",
            self.count,
            ", ".join(str(w.pid) for w in self.workers.values()),
        )

    async def stop(self, timeout: float) -> None:
        """Ask every worker to stop gracefully; kill what has not exited after ``timeout`` (+5 s)."""
        self._closing = True
        await asyncio.gather(*(self._stop_worker(w, timeout) for w in list(self.workers.values())))
        for task in list(self._watchers):
            task.cancel()
        self._up.set(0)

    # -- one worker --------------------------------------------------------------------

    async def _start_worker(self, worker: Worker) -> None:
        assert self._loaded is not None
        self.workers[worker.index] = worker
        worker.state = "starting"
        parent, child = socket.socketpair()
        try:
            env = {**os.environ, FD_VARIABLE: str(child.fileno())}
            worker.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "collector.runtime.worker", pass_fds=(child.fileno(),), env=env
            )
        finally:
            child.close()
        reader, worker.writer = await asyncio.open_unix_connection(sock=parent)
        loop = asyncio.get_running_loop()
        worker._ready = loop.create_future()
        worker._reader_task = asyncio.create_task(self._read(worker, reader))
        await worker.send(
            {
                "op": "start",
                "index": worker.index,
                "text": self._loaded.text,
                "source": self._loaded.source,
                "strict": self.strict_plugins,
            }
        )
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                ready = await worker._ready
        except TimeoutError:
            await self._kill(worker)
            raise WorkerStartError(f"worker {worker.index} did not start within {START_TIMEOUT_S:g}s") from None
        if ready.get("op") != "ready":
            await self._reap(worker)
            raise WorkerStartError(f"worker {worker.index}: {ready.get('error', 'exited during start-up')}")
        worker.ports = ready.get("ports") or {}
        worker.state = "running"
        worker.started_at = time.monotonic()
        self._up.set(self.running())

    async def _read(self, worker: Worker, reader: asyncio.StreamReader) -> None:
        """Dispatch the worker's lines: its start-up answer, then scrape replies."""
        try:
            while line := await reader.readline():
                msg = orjson.loads(line)
                op = msg.get("op")
                if op in ("ready", "failed") and worker._ready is not None and not worker._ready.done():
                    worker._ready.set_result(msg)
                elif op == "scraped":
                    future = worker._replies.pop(msg.get("id"), None)
                    if future is not None and not future.done():
                        future.set_result(msg)
        except (ConnectionError, ValueError) as exc:
            log.debug("worker %d control channel: %s", worker.index, exc)
        finally:
            if worker._ready is not None and not worker._ready.done():
                worker._ready.set_result({"op": "failed", "error": "exited during start-up (see its log above)"})
            for future in worker._replies.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"worker {worker.index} went away"))
            worker._replies.clear()

    async def _watch(self, index: int) -> None:
        """Start worker ``index`` again each time it dies, on the same shard, after a back-off that grows
        while it keeps dying (a start that fails counts as dying at once)."""
        while not self._closing:
            worker = self.workers[index]
            code = await worker.process.wait() if worker.process is not None else None
            if self._closing:
                return
            worker.last_exit = code
            worker.state = "restarting"
            self._up.set(self.running())
            ran = time.monotonic() - worker.started_at
            attempt = 0 if ran >= _STABLE_AFTER_S else worker.restarts
            delay = _RESTART_BACKOFF_S[min(attempt, len(_RESTART_BACKOFF_S) - 1)]
            await self._close_channel(worker)
            # Wait first: a Ctrl-C reaches the whole process group, so a worker may exit just before
            # the primary starts stopping; that is not a crash to report.
            await asyncio.sleep(delay)
            if self._closing:
                return
            log.error(
                "worker %d (pid %s) exited with status %s after %.0f s; started again after %.1f s "
                "(its shard keeps what it had committed)",
                index,
                worker.pid,
                code,
                ran,
                delay,
            )
            self._restarts.labels(worker=str(index)).inc()
            try:
                await self._start_worker(Worker(index, restarts=worker.restarts + 1, started_at=time.monotonic()))
            except (WorkerStartError, OSError) as exc:
                log.error("worker %d could not be started again: %s", index, exc)

    async def _stop_worker(self, worker: Worker, timeout: float) -> None:
        if worker.process is None or worker.process.returncode is not None:
            worker.state = "stopped"
            await self._close_channel(worker)
            return
        worker.state = "stopping"
        with contextlib.suppress(ConnectionError, RuntimeError):
            await worker.send({"op": "stop"})
        try:
            async with asyncio.timeout(timeout + 5.0):
                await worker.process.wait()
        except TimeoutError:
            log.error("worker %d did not stop within %.0f s; killing it", worker.index, timeout + 5.0)
            await self._kill(worker)
        worker.state = "stopped"
        await self._close_channel(worker)
        self._up.set(self.running())

    async def _kill(self, worker: Worker) -> None:
        if worker.process is not None and worker.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()
            await worker.process.wait()
        await self._close_channel(worker)

    async def _reap(self, worker: Worker) -> None:
        if worker.process is not None:
            try:
                async with asyncio.timeout(10.0):
                    await worker.process.wait()
            except TimeoutError:
                await self._kill(worker)
        await self._close_channel(worker)

    async def _close_channel(self, worker: Worker) -> None:
        if worker.writer is not None:
            worker.writer.close()
            with contextlib.suppress(Exception):
                await worker.writer.wait_closed()
        if worker._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(worker._reader_task, 1.0)

    def _check_ports(self) -> None:
        """Every worker must listen on the same ports: port 0 would give each its own."""
        seen: dict[str, set[Any]] = {}
        for worker in self.workers.values():
            for rid, port in worker.ports.items():
                seen.setdefault(rid, set()).add(port)
        for rid, ports in seen.items():
            if len(ports) > 1:
                raise WorkerStartError(
                    f"receiver {rid} listens on a different port in each worker ({sorted(map(str, ports))}): "
                    "with service.workers > 1 give it a fixed port, not 0"
                )

    # -- what the admin server asks ------------------------------------------------------

    def running(self) -> int:
        return sum(1 for w in self.workers.values() if w.state == "running")

    async def scrape(self) -> dict[int, dict[str, Any]]:
        """Each running worker's metrics text and health, asked concurrently (missing if it does not answer)."""
        loop = asyncio.get_running_loop()
        asks: dict[int, asyncio.Future[dict[str, Any]]] = {}
        for worker in self.workers.values():
            if worker.state != "running":
                continue
            ident = next(self._ids)
            future = loop.create_future()
            worker._replies[ident] = future
            try:
                await worker.send({"op": "scrape", "id": ident})
            except (ConnectionError, RuntimeError):
                worker._replies.pop(ident, None)
                continue
            asks[worker.index] = future
        out: dict[int, dict[str, Any]] = {}
        if not asks:
            return out
        done, _ = await asyncio.wait(asks.values(), timeout=SCRAPE_TIMEOUT_S)
        for index, future in asks.items():
            if future in done and future.exception() is None:
                out[index] = future.result()
            else:
                future.cancel()
        return out

    def describe(self, scraped: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """The ``workers`` part of ``/health``: each worker's process state and, if it answered, its health."""
        out: dict[str, Any] = {}
        for index, worker in sorted(self.workers.items()):
            entry: dict[str, Any] = {"pid": worker.pid, "state": worker.state, "restarts": worker.restarts}
            if worker.last_exit is not None:
                entry["last_exit_status"] = worker.last_exit
            answer = scraped.get(index)
            if answer is not None:
                entry["ready"] = bool(answer["health"].get("ready"))
                entry["components"] = answer["health"].get("components", {})
                entry["storage"] = answer["health"].get("storage")
            else:
                entry["ready"] = False
                entry["reason"] = (
                    f"worker {index} is {worker.state}" if worker.state != "running" else "did not answer in time"
                )
            out[str(index)] = entry
        return out
