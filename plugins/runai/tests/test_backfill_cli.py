"""`collector backfill runai` as a user runs it: a subprocess, the fake control plane, the fake OpenMeter.

The fake holds known step functions in the past; every window of the range
must be billed once with the exact integrals and the ids a live run computes
(source, ``workload``, workload id, window start), so a backfill over windows
already delivered -- or a second backfill -- is de-duplicated by OpenMeter.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from fakerunai import FakeRunai, in_thread
from test_truth_subprocess import SECRET, Steps, integral

from collector.events import stable_id
from collector.pull import Window
from support.fake_openmeter import FakeOpenMeter

WINDOW = 10.0


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "collector"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COLLECTOR_", "OPENMETER_", "RUNAI_"))}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=timeout)


def rfc3339(t: float) -> str:
    return Window(t, t + WINDOW).start_time


def series(t: float) -> dict[str, tuple[float, Steps, Steps]]:
    """workload id -> (created, GPU_ALLOCATION steps, CPU_REQUEST_CORES steps): changes inside the windows,
    one workload starting in the second window and one in the third."""
    return {
        "w-a": (t - 600, [(t - 5, 2), (t + 7.5, 4), (t + 22, 1)], [(t - 5, 8), (t + 13.5, 6)]),
        "w-b": (t + 10, [(t + 12.5, 1)], [(t + 12.5, 4)]),
        "w-c": (t + 25, [(t + 25.5, 2), (t + 28, 3)], [(t + 25.5, 1)]),
    }


def expected(t: float, windows: int) -> dict[str, dict[str, Any]]:
    """id -> (time, workload id, GPU-seconds, core-seconds) of every window in which a workload ran."""
    out: dict[str, dict[str, Any]] = {}
    for i in range(windows):
        start = t + i * WINDOW
        for wid, (_created, gpu, cpu) in series(t).items():
            if gpu[0][0] >= start + WINDOW:
                continue  # not started yet: no samples, no event
            event_id = stable_id("runai", "workload", wid, rfc3339(start))
            out[event_id] = {"time": rfc3339(start), "workload_id": wid,
                             "gpu_allocation_seconds": integral(gpu, start, start + WINDOW),
                             "cpu_request_core_seconds": integral(cpu, start, start + WINDOW)}  # fmt: skip
    return out


def seen(arrivals: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for event in arrivals:
        data = event["data"]
        out[event["id"]] = {"time": event["time"], "workload_id": data["workload_id"],
                            "gpu_allocation_seconds": data["gpu_allocation_seconds"],
                            "cpu_request_core_seconds": data["cpu_request_core_seconds"]}  # fmt: skip
    return out


def install(fake: FakeRunai, t: float) -> None:
    for wid, (created, gpu, cpu) in series(t).items():
        fake.add_workload(wid, name=f"train-{wid}", project="vision", created=created)
        fake.set_series("workloads", wid, "GPU_ALLOCATION", gpu)
        fake.set_series("workloads", wid, "CPU_REQUEST_CORES", cpu)


def write_config(path: Path, runai_url: str, openmeter_url: str, storage: Path) -> Path:
    receiver = {
        "url": runai_url,
        "app_id": "collector",
        "app_secret": SECRET,
        "interval": f"{WINDOW:g}s",
        "resolution": "0.5s",
        "workload_metrics": ["GPU_ALLOCATION", "CPU_REQUEST_CORES"],
        "retry_initial": "100ms",
        "retry_max": "500ms",
    }
    doc = {
        "receivers": {"runai": receiver},
        "exporters": {"openmeter": {"url": openmeter_url, "batch": {"period": 0.05}}},
        "storage": {"directory": str(storage)},
        "service": {"pipelines": {"usage": {"receivers": ["runai"], "exporters": ["openmeter"]}}},
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def test_backfill_bills_every_window_exactly_with_the_live_ids(tmp_path: Path):
    t = math.floor(time.time() / WINDOW) * WINDOW - 6 * WINDOW  # three windows well in the past
    with in_thread(app_secret=SECRET) as fake, FakeOpenMeter.in_thread() as openmeter:
        install(fake, t)
        cfg = write_config(tmp_path / "collector.yaml", fake.url, openmeter.url, tmp_path / "data")
        args = ("backfill", "runai", "-c", str(cfg), "--from", rfc3339(t), "--to", rfc3339(t + 3 * WINDOW))
        out = run_cli(*args)
        assert out.returncode == 0, out.stderr
        want = expected(t, 3)
        assert len(want) == 6  # w-a in all three windows, w-b in the last two, w-c in the last
        assert f"backfill runai: 3 window(s) from {rfc3339(t)} to {rfc3339(t + 3 * WINDOW)}, 6 event(s) committed" in (
            out.stdout
        )
        first = list(openmeter.arrivals)
        assert sorted(e["id"] for e in first) == sorted(want)  # each window once, with the live ids
        assert seen(first) == want  # the exact integrals
        assert SECRET not in out.stdout + out.stderr
        # Again: the very same ids and events, which OpenMeter de-duplicates.
        again_out = run_cli(*args)
        assert again_out.returncode == 0, again_out.stderr
        again = openmeter.arrivals[len(first) :]
        assert sorted(e["id"] for e in again) == sorted(want)
        assert seen(again) == want
