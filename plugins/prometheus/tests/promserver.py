"""A real Prometheus server with deterministic history, for the receiver's tests.

History is written as OpenMetrics text (timestamps in seconds, ending with
``# EOF``) and turned into TSDB blocks with ``promtool tsdb create-blocks-from
openmetrics``.  It lies three days in the past, so Prometheus loads it as
persisted blocks and never mixes it with its head; tests drive the receiver
with a FakeClock set to that time.

The series (sampled every 15 s from ``D0`` to ``D0 + 2h``; values are exact,
so ``increase()`` over a window that holds whole scrape intervals is exact):

* ``gpu_seconds_total{namespace="team-a", gpu="0", pod="train-1"}``: +1 per second;
* ``gpu_seconds_total{namespace="team-b", gpu="1", pod="train-2"}``: +2 per second;
* ``gpu_seconds_total{gpu="7", pod="orphan"}``: +1 per second, *no namespace*;
* ``http_requests_total{customer="c1", route="/api"}``: +3 per second;
* ``http_requests_total{customer="c2", route="/api"}``: +1 per second;
* gauges, constant: ``DCGM_FI_DEV_GPU_UTIL`` for one GPU of ``team-a`` (NVIDIA's DCGM
  exporter, with pod attribution) and ``kube_pod_container_resource_requests``
  of 2 GPUs for ``team-b`` (kube-state-metrics), for the GPU-hours example.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

SCRAPE = 15
SPAN = 2 * 3600

#: (metric, labels, increase per second)
SERIES: list[tuple[str, dict[str, str], int]] = [
    ("gpu_seconds_total", {"namespace": "team-a", "gpu": "0", "pod": "train-1"}, 1),
    ("gpu_seconds_total", {"namespace": "team-b", "gpu": "1", "pod": "train-2"}, 2),
    ("gpu_seconds_total", {"gpu": "7", "pod": "orphan"}, 1),
    ("http_requests_total", {"customer": "c1", "route": "/api"}, 3),
    ("http_requests_total", {"customer": "c2", "route": "/api"}, 1),
]


#: (metric, labels, constant value)
GAUGES: list[tuple[str, dict[str, str], float]] = [
    (
        "DCGM_FI_DEV_GPU_UTIL",
        {"gpu": "0", "UUID": "GPU-1", "modelName": "NVIDIA H100 80GB HBM3", "namespace": "team-a", "pod": "train-1"},
        87,
    ),
    (
        "kube_pod_container_resource_requests",
        {"namespace": "team-b", "pod": "train-2", "container": "main", "resource": "nvidia_com_gpu", "unit": "integer"},
        2,
    ),
]


def history_start(now: float | None = None) -> int:
    """D0: midnight UTC three days ago (blocks must be well older than Prometheus' head)."""
    now = time.time() if now is None else now
    return int(now // 86400) * 86400 - 3 * 86400


def openmetrics(d0: int) -> str:
    lines: list[str] = []
    for metric in dict.fromkeys(m for m, _, _ in SERIES):
        family = metric.removesuffix("_total")
        lines += [f"# HELP {family} Synthetic usage for the tests.", f"# TYPE {family} counter"]
        for t in range(d0, d0 + SPAN + 1, SCRAPE):
            for name, labels, rate in SERIES:
                if name == metric:
                    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
                    lines.append(f"{name}{{{text}}} {rate * (t - d0)} {t}")
    for name, labels, value in GAUGES:
        text = ",".join(f'{k}="{v}"' for k, v in labels.items())
        lines += [f"# HELP {name} Synthetic gauge for the tests.", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{text}}} {value} {t}" for t in range(d0, d0 + SPAN + 1, SCRAPE)]
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def create_blocks(d0: int, workdir: Path) -> Path:
    """TSDB blocks holding the history, under ``workdir/blocks``."""
    source = workdir / "history.om"
    source.write_text(openmetrics(d0), encoding="utf-8")
    blocks = workdir / "blocks"
    subprocess.run(
        [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics", str(source), str(blocks)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return blocks


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """One Prometheus process on a fixed port and data directory; stop/start at will."""

    def __init__(self, data_dir: Path, workdir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.workdir = workdir
        self.port = port or free_port()
        self.config = workdir / "prometheus.yml"
        # Nothing to scrape: the data is the history only.
        self.config.write_text("global:\n  scrape_interval: 1h\nscrape_configs: []\n", encoding="utf-8")
        self.log_path = workdir / f"prometheus-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.data_dir}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=100y",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(self.workdir),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"prometheus not ready within {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM our own process (by PID) and reap it; SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
