"""Run ``collector run -c FILE`` as a subprocess, for crash and fault tests.

Why a subprocess: only a separate process can be killed with SIGKILL at a random
moment and restarted on the same storage directory, which is what the oracle
crash test needs; the other reliability tests use the same helper so that they
exercise the real command line, signal handling and admin server.

Ports are chosen once (:func:`free_port`) and written into the configuration,
so a restarted collector listens where the clients already send: clients see
"connection refused" while it is down, as they would in production.

Everything here is bounded in time: every wait takes a timeout and raises
:class:`TimeoutError` (with the tail of the collector's log) when it passes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
EXPORTER_ID = "openmeter"


def collector_command() -> list[str]:
    """The console script of the venv that runs the tests (or ``python -m``)."""
    script = Path(sys.executable).with_name("collector")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "collector.cli"]


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago, and not one this process handed out before.

    The kernel may give the same ephemeral port to two binds in a row once the first is closed, so two
    calls for one collector (its receiver and its admin port) could collide; remembering what was
    handed out prevents that within a test run.
    """
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no fresh free port on 127.0.0.1 after 100 tries")


def _merge(base: dict[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    out = dict(base)
    for key, value in (extra or {}).items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def collector_config(
    *,
    storage: Path,
    openmeter_url: str,
    receiver_port: int,
    admin_port: int,
    exporter: Mapping[str, Any] | None = None,
    receiver: Mapping[str, Any] | None = None,
    drain_timeout: float = 5.0,
    log_level: str = "info",
) -> dict[str, Any]:
    """http receiver -> durable queue -> openmeter exporter, fast retries.

    ``exporter`` and ``receiver`` are merged (recursively) over the defaults.
    """
    exp = _merge(
        {
            "url": openmeter_url,
            "retry": {"initial_interval": 0.05, "max_interval": 0.5, "auth_interval": 0.2},
            "batch": {"period": 0.05},
            "timeout": 5.0,
        },
        exporter,
    )
    rec = _merge({"endpoint": f"127.0.0.1:{receiver_port}"}, receiver)
    return {
        "receivers": {"http": rec},
        "exporters": {EXPORTER_ID: exp},
        "storage": {"directory": str(storage)},
        "service": {
            "telemetry": {"endpoint": f"127.0.0.1:{admin_port}", "log_format": "json", "log_level": log_level},
            "drain_timeout": drain_timeout,
            "pipelines": {"events": {"receivers": ["http"], "exporters": [EXPORTER_ID]}},
        },
    }


class CollectorProcess:
    """One collector configuration, started and killed as often as a test likes.

    The log (stdout and stderr of every run, appended) goes to ``log_path``.
    """

    def __init__(
        self,
        workdir: Path,
        config: Mapping[str, Any],
        *,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = dict(config)
        self.config_path = self.workdir / "collector.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        self.log_path = self.workdir / "collector.log"
        self.storage = Path(self.config["storage"]["directory"])
        self.admin_url = "http://" + self.config["service"]["telemetry"]["endpoint"]
        self.ingest_url = "http://" + self.config["receivers"]["http"]["endpoint"] + "/api/v1/events"
        self.env = {**os.environ, **(env or {})}
        self.env.pop("COLLECTOR_CONFIG", None)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.kills = 0

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            raise RuntimeError("collector already running")
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts + 1} at {time.time():.3f}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*collector_command(), "run", "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
                env=self.env,
                # Its own process group: kill() takes its worker processes (service.workers > 1) with it.
                start_new_session=True,
            )
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def kill(self) -> int | None:
        """SIGKILL (kill -9) the collector's whole process group (worker processes too) and reap it;
        returns the primary's exit status."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            self.kills += 1
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return proc.wait(timeout=10)

    def worker_pids(self) -> dict[int, int]:
        """Worker index -> pid of the running worker processes, from /health (service.workers > 1)."""
        doc = self.health() or {}
        return {
            int(i): w["pid"] for i, w in doc.get("workers", {}).items() if w.get("state") == "running" and w.get("pid")
        }

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait (graceful drain); SIGKILL if it overstays ``timeout``."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
                raise TimeoutError(f"collector did not stop within {timeout}s\n{self.log_tail()}") from None
        return proc.returncode

    def __enter__(self) -> CollectorProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        # Never leave a collector behind, whatever the test did.
        if self.running:
            self.kill()

    # -- observation ---------------------------------------------------------------

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """(status, body) of a GET on the admin server."""
        try:
            with urllib.request.urlopen(self.admin_url + path, timeout=timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def health(self, timeout: float = 2.0) -> dict[str, Any] | None:
        """The /health document, or None while the service is not up."""
        try:
            _status, body = self.get("/health", timeout)
            doc = json.loads(body)
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def exporter_health(self) -> dict[str, Any] | None:
        doc = self.health()
        if not doc:
            return None
        result = doc.get("components", {}).get("exporters", {}).get(EXPORTER_ID)
        return result if isinstance(result, dict) else None

    def wait_started(self, timeout: float = 15.0) -> None:
        """Until /health reports a started service (receivers listening)."""
        from collector.testing import eventually_sync

        def started() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"collector exited with {self.proc.returncode}\n{self.log_tail()}")
            doc = self.health(timeout=1.0)
            return bool(doc and doc.get("started_at"))

        try:
            eventually_sync(started, timeout=timeout, interval=0.02, message="the collector started")
        except AssertionError:
            raise TimeoutError(f"collector not started within {timeout}s\n{self.log_tail()}") from None

    def wait_drained(self, timeout: float = 60.0, settle: float = 0.0) -> dict[str, Any]:
        """Until the exporter's queue is empty and nothing is in flight (every worker shard's too).

        With ``settle``, the queue must still be empty ``settle`` seconds
        after it was first seen empty (late commits, last acks).
        """
        deadline = time.monotonic() + timeout
        last: dict[str, Any] | None = None
        empty_since: float | None = None
        while time.monotonic() < deadline:
            doc = self.health() or {}
            parts = [doc.get("components", {}).get("exporters", {}).get(EXPORTER_ID)]
            parts += [
                w.get("components", {}).get("exporters", {}).get(EXPORTER_ID) for w in doc.get("workers", {}).values()
            ]
            last = parts[0]
            if all(p and p["queue"]["events"] == 0 and p.get("in_flight_events", 0) == 0 for p in parts):
                empty_since = empty_since or time.monotonic()
                if time.monotonic() - empty_since >= settle:
                    assert last is not None
                    return last
            else:
                empty_since = None
            time.sleep(0.05)
        raise TimeoutError(f"queue not drained within {timeout}s: {last}\n{self.log_tail()}")

    def metrics(self) -> dict[str, float]:
        """``/metrics`` parsed into {'name{labels}': value} (samples only)."""
        status, body = self.get("/metrics", timeout=5.0)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_prometheus(body.decode())

    # -- the queue on disk -----------------------------------------------------------

    @property
    def queue_db(self) -> Path:
        return self.storage / "exporters" / EXPORTER_ID / "queue" / "queue.db"

    def queued_ids_on_disk(self) -> Counter[tuple[str, str]]:
        """(source, id) -> rows holding it, of the queue as left on disk.

        Only valid while the collector is NOT running (after :meth:`kill`).
        Reads a *copy* of the database and its WAL, so that the next start
        still finds the files exactly as the crash left them (WAL recovery
        included).
        """
        return read_queue_ids(self.queue_db)

    def shard_queue_db(self, worker: int) -> Path:
        """Worker ``worker``'s queue (service.workers > 1)."""
        return self.storage / "workers" / str(worker) / "exporters" / EXPORTER_ID / "queue" / "queue.db"

    def all_queued_ids_on_disk(self) -> Counter[tuple[str, str]]:
        """:meth:`queued_ids_on_disk` over the primary's queue and every worker shard's."""
        out = self.queued_ids_on_disk()
        for shard in sorted((self.storage / "workers").glob("*")):
            if shard.name.isdigit():
                out.update(read_queue_ids(self.shard_queue_db(int(shard.name))))
        return out


def read_queue_ids(db: Path) -> Counter[tuple[str, str]]:
    """Ids of every unacknowledged queue item in a (copied) persist-queue database."""
    out: Counter[tuple[str, str]] = Counter()
    if not db.exists():
        return out
    with tempfile.TemporaryDirectory(prefix="queue-copy-") as tmp:
        copy = Path(tmp) / db.name
        for suffix in ("", "-wal", "-shm"):
            src = db.with_name(db.name + suffix)
            with contextlib.suppress(FileNotFoundError):
                shutil.copyfile(src, copy.with_name(copy.name + suffix))
        conn = sqlite3.connect(str(copy))
        try:
            tables = [
                r[0]
                for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'ack_queue%'")
            ]
            for table in tables:
                # persist-queue's AckStatus: 5 = acked (will never be sent again).
                for (data,) in conn.execute(f"SELECT data FROM {table} WHERE status < 5"):
                    doc = json.loads(bytes(data))
                    for ev in doc.get("e", []):
                        out[(ev.get("source"), ev.get("id"))] += 1
        finally:
            conn.close()
    return out


def parse_prometheus(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            continue
    return out


def metric_sum(samples: Mapping[str, float], name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        got = dict(_labels(rest.rstrip("}"))) if rest else {}
        if all(got.get(k) == v for k, v in labels.items()):
            total += value
    return total


def _labels(text: str) -> Iterator[tuple[str, str]]:
    # Our label values never hold commas or quotes (exporter ids, reasons).
    for part in text.split(","):
        if "=" in part:
            k, _, v = part.partition("=")
            yield k.strip(), v.strip().strip('"')


__all__ = [
    "EXPORTER_ID",
    "CollectorProcess",
    "collector_config",
    "free_port",
    "metric_sum",
    "parse_prometheus",
    "read_queue_ids",
]
