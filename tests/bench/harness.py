"""Shared pieces of the benchmarks: subprocesses, ports, RSS, metrics, configs.

Every process a benchmark starts is tracked in a :class:`Procs` and ended by
its own PID (SIGTERM, then SIGKILL after a grace period) when the block
exits, whatever happened inside it.  Everything binds 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent.parent
VENV_BIN = Path(sys.executable).parent
PYTHON = sys.executable


def collector_exe() -> list[str]:
    exe = VENV_BIN / "collector"
    return [str(exe)] if exe.exists() else [PYTHON, "-m", "collector.cli"]


def free_port() -> int:
    """A port that was free a moment ago (bind 0, read, close)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


def http_json(url: str, timeout: float = 5.0) -> Any:
    return json.loads(http_get(url, timeout))


# -- processes ----------------------------------------------------------------------


class Procs:
    """Processes started by a benchmark; each ended by its PID on exit."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO)
        log.close()  # the child holds its own descriptor
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc, grace=5.0)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_loadgen(url: str, *, timeout: float, **options: Any) -> dict[str, Any]:
    """Run loadgen.py as its own process; its JSON result."""
    argv = [PYTHON, str(BENCH_DIR / "loadgen.py"), "--url", url]
    for key, value in options.items():
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    out = subprocess.run(argv, capture_output=True, timeout=timeout, check=False, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed ({out.returncode}): {out.stderr.decode(errors='replace')[-2000:]}")
    return dict(json.loads(out.stdout))


# -- memory -------------------------------------------------------------------------


def rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process in MiB, from /proc/PID/status."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all threads), seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return fh.read().rsplit(")", 1)[1].split()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and all its live descendants, plus the children it has reaped.

    With ``service.workers`` the collector's events are taken in by child
    processes: the CPU per acknowledged event must count them all (a worker
    that was restarted and reaped is in the parent's cutime/cstime).
    """
    return sum(tree_cpu_by_process(pid).values())


def tree_cpu_by_process(pid: int) -> dict[int, float]:
    """User + system CPU seconds of ``pid`` and of each live descendant, by PID; ``pid``'s own figure
    includes the children it has reaped.  The difference of two readings shows how the work was
    spread over worker processes (SO_REUSEPORT gives each connection to one of them)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        children.setdefault(ppid, []).append(int(entry))
    hz = os.sysconf("SC_CLK_TCK")
    out: dict[int, float] = {}
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            fields = _stat_fields(current)
        except OSError:
            continue
        ticks = int(fields[11]) + int(fields[12])
        if current == pid:
            ticks += int(fields[13]) + int(fields[14])
        out[current] = ticks / hz
        todo.extend(children.get(current, ()))
    return out


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine, all cores, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as fh:
        # user nice system idle iowait irq softirq steal; guest time is already in user and nice
        ticks = [int(x) for x in fh.readline().split()[1:9]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


class LineServer:
    """A helper process a benchmark drives over its stdin and stdout (a fake, moto): it answers each
    request with one JSON line, and ``quit`` (or the end of its stdin) ends it; else it is killed."""

    #: how the helper is named in the error when it does not answer
    name = "the helper process"

    def __init__(self, cmd: list[str]) -> None:
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def line(self, timeout: float, what: str) -> dict[str, Any]:
        """Its next answer; a helper silent for ``timeout`` seconds is killed (so readline() returns)."""
        assert self.proc.stdout is not None
        killer = threading.Timer(timeout, self.proc.kill)
        killer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            killer.cancel()
        if not line:
            self.proc.wait(10)
            raise SystemExit(f"{self.name} did not {what} (exit status {self.proc.returncode})")
        result: dict[str, Any] = json.loads(line)
        return result

    def ask(self, request: str, timeout: float, what: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        return self.line(timeout, what)

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)


def machine_busy_pct(seconds: float = 1.0) -> float:
    """CPU busy % of the whole machine over ``seconds`` (all cores).

    Called while none of the benchmark's processes run, it is the load that
    others put on the machine: a busy neighbour makes every figure noisier.
    """
    busy0, total0 = machine_cpu_seconds()
    time.sleep(seconds)
    busy1, total1 = machine_cpu_seconds()
    return round((busy1 - busy0) / max(1e-9, total1 - total0) * 100, 1)


# -- the collector ------------------------------------------------------------------

COLLECTOR_CONFIG = """\
receivers:
  http:
    endpoint: 127.0.0.1:{http_port}
exporters:
  openmeter:
    url: http://127.0.0.1:{sink_port}
    # Short backoff so that the drain starts soon after the destination is
    # back; the drain rate is measured from the first delivery anyway.
    retry: {{initial_interval: 0.05, max_interval: 0.5}}
    queue: {{durability: full}}{batch}
storage:
  directory: {storage}
service:
  telemetry: {{endpoint: "127.0.0.1:{admin_port}", log_level: warning, log_format: text}}
  pipelines:
    events: {{receivers: [http], exporters: [openmeter]}}
"""


class Collector:
    """``collector run -c cfg.yaml`` as a subprocess, with its ports."""

    def __init__(
        self,
        procs: Procs,
        workdir: Path,
        sink_port: int,
        name: str = "collector",
        workers: int | None = None,
        max_events: int | None = None,
    ) -> None:
        self.procs = procs
        self.workdir = workdir
        self.name = name
        self.http_port = free_port()
        self.admin_port = free_port()
        self.sink_port = sink_port
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(
            COLLECTOR_CONFIG.format(
                http_port=self.http_port,
                admin_port=self.admin_port,
                sink_port=sink_port,
                storage=workdir / f"{name}-data",
                # the exporter's batch.max_events (events per request to the sink), when not the default
                batch="" if max_events is None else f"\n    batch: {{max_events: {max_events}}}",
            ),
            encoding="utf-8",
        )
        if workers is not None:  # service.workers (docs/configuration.md); appended under the service block
            with self.config.open("a", encoding="utf-8") as fh:
                fh.write(f"  workers: {workers}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/api/v1/events"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, env: dict[str, str] | None = None, exe: list[str] | None = None) -> None:
        argv = [*(exe or collector_exe()), "run", "-c", str(self.config)]
        self.proc = self.procs.start(self.name, argv, env=env)
        wait_port(self.admin_port, 30, self.proc)
        wait_port(self.http_port, 30, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc, grace=15.0)

    def metrics(self) -> dict[str, float]:
        """The collector's own metrics that the benchmarks use, by name."""
        text = http_get(f"http://127.0.0.1:{self.admin_port}/metrics").decode()
        wanted = {
            "collector_exporter_delivered_events_total": "delivered",
            "collector_exporter_enqueued_events_total": "enqueued",
            "collector_queue_events": "queued",
            "collector_queue_bytes": "queued_bytes",
        }
        out: dict[str, float] = {}
        for line in text.splitlines():
            name = line.split("{", 1)[0].split(" ", 1)[0]
            if name in wanted:
                out[wanted[name]] = out.get(wanted[name], 0.0) + float(line.rsplit(" ", 1)[1])
        return out


class SinkProc:
    """tests/bench/sink.py as a subprocess on a port chosen in advance."""

    def __init__(self, procs: Procs, port: int | None = None) -> None:
        self.procs = procs
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = self.procs.start("sink", [PYTHON, str(BENCH_DIR / "sink.py"), "--port", str(self.port)])
        wait_port(self.port, 30, self.proc)

    def count(self) -> dict[str, Any]:
        return dict(http_json(f"http://127.0.0.1:{self.port}/count"))

    def stop(self) -> None:
        if self.proc is not None:
            self.procs.stop(self.proc)


@contextlib.contextmanager
def workspace(root: Path, name: str) -> Iterator[Path]:
    path = root / name
    path.mkdir(parents=True, exist_ok=True)
    yield path
