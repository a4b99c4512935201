"""Real `collector run` processes against the fake Run:ai control plane, with known truth.

The fake runs on the real clock; each workload's GPU_ALLOCATION and
CPU_REQUEST_CORES are step functions whose changes fall on the receiver's
sample grid (1-second windows sampled every 0.25 s), several of them inside a
window, so the exact truth of every window is known: allocation x seconds.
One workload appears while the collector runs, one finishes.  Then:

* SIGKILL in the middle, the finishing workload completing while it is down,
  restart on the same storage (the windows that came due are backfilled);
* the control plane answering 503 to everything for three seconds.

Oracle: the events de-duplicated by id (an id sent twice is the same event;
every id is the one a live run computes for its workload and window), and for
every (workload, window) from the first window collected to the watermark, the
GPU-seconds and core-seconds billed equal the step function's integral exactly:
nothing lost, nothing billed twice.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fakerunai import FakeRunai, in_thread

from collector.events import stable_id
from collector.testing import eventually_sync
from support.collector_proc import CollectorProcess, collector_config, free_port
from support.fake_openmeter import FakeOpenMeter

pytestmark = pytest.mark.slow

SECRET = "s3cret-do-not-log"
RESOLUTION = 0.25
Steps = list[tuple[float, float]]


@dataclass
class Workload:
    """A workload's step functions: ``(from_time, value)``, each value holding until the next step."""

    id: str
    name: str
    project: str
    gpu: Steps
    cpu: Steps
    created: float
    appears: float | None = None  # added to the control plane only at this (real) time
    completes: float | None = None  # its phase becomes Completed at this (real) time
    series: dict[str, Steps] = field(init=False)

    def __post_init__(self) -> None:
        self.series = {"GPU_ALLOCATION": self.gpu, "CPU_REQUEST_CORES": self.cpu}


def integral(steps: Steps, start: float, end: float) -> float:
    """The step function's integral over ``[start, end)``; nothing before its first step."""
    total = 0.0
    for i, (at, value) in enumerate(steps):
        until = steps[i + 1][0] if i + 1 < len(steps) else math.inf
        overlap = min(until, end) - max(at, start)
        if overlap > 0:
            total += value * overlap
    return total


def has_data(steps: Steps, start: float, end: float) -> bool:
    return bool(steps) and steps[0][0] < end


def truth(workloads: list[Workload], start: float, end: float) -> dict[tuple[str, float], tuple[float, float]]:
    """(workload id, window start) -> (GPU-seconds, core-seconds) of every 1-second window in ``[start, end)``
    in which a workload allocated anything."""
    out: dict[tuple[str, float], tuple[float, float]] = {}
    for t in range(int(start), int(end)):
        for w in workloads:
            got = (integral(w.gpu, t, t + 1), integral(w.cpu, t, t + 1))
            if got != (0.0, 0.0):
                out[(w.id, float(t))] = got
    return out


def scenario(t0: int) -> list[Workload]:
    """Changes on whole, half and quarter seconds -- inside windows, not only on their edges."""
    return [
        Workload("w-train", "train", "vision", created=t0 - 600,
                 gpu=[(t0, 2), (t0 + 2.5, 4), (t0 + 5.25, 1), (t0 + 9, 3)],
                 cpu=[(t0, 8), (t0 + 4, 16), (t0 + 7.5, 8)]),
        Workload("w-short", "short", "nlp", created=t0 - 600, completes=t0 + 6.5,
                 gpu=[(t0 + 1, 1), (t0 + 3.75, 2), (t0 + 6, 0)],
                 cpu=[(t0 + 1, 4), (t0 + 6, 0)]),
        Workload("w-late", "late", "vision", created=t0 + 4, appears=t0 + 4,
                 gpu=[(t0 + 4.5, 8), (t0 + 8, 2)],
                 cpu=[(t0 + 4.5, 2), (t0 + 6.25, 3)]),
    ]  # fmt: skip


def last_change(workloads: list[Workload]) -> float:
    return max(at for w in workloads for steps in w.series.values() for at, _ in steps)


def install(fake: FakeRunai, workloads: list[Workload]) -> None:
    """Every series now (the fake never answers samples after its "now"); workloads present from the start."""
    for w in workloads:
        for metric, steps in w.series.items():
            fake.set_series("workloads", w.id, metric, steps)
        if w.appears is None:
            fake.add_workload(w.id, name=w.name, project=w.project, created=w.created)


class ControlPlane(threading.Thread):
    """Adds the late workloads and completes the finishing ones on time, as the cluster would."""

    def __init__(self, fake: FakeRunai, workloads: list[Workload]) -> None:
        super().__init__(name="runai-cluster", daemon=True)
        self.fake = fake
        self.steps = sorted(
            [(w.appears, "appear", w) for w in workloads if w.appears is not None]
            + [(w.completes, "complete", w) for w in workloads if w.completes is not None],
            key=lambda s: s[0],
        )

    def run(self) -> None:
        for when, what, w in self.steps:
            delay = when - time.time()
            if delay > 0:
                time.sleep(delay)
            if what == "appear":
                self.fake.add_workload(w.id, name=w.name, project=w.project, created=w.created)
            else:
                self.fake.set_phase(w.id, "Completed")


def make_config(tmp: Path, runai_url: str, openmeter_url: str) -> dict[str, Any]:
    cfg = collector_config(
        storage=tmp / "storage", openmeter_url=openmeter_url, receiver_port=free_port(), admin_port=free_port()
    )
    cfg["receivers"]["runai"] = {
        "url": runai_url,
        "app_id": "collector",
        "app_secret": SECRET,
        "interval": "1s",
        "offset": "1s",
        "resolution": f"{RESOLUTION}s",
        # The default phases: a workload that finished before its last windows were read (offset, downtime)
        # comes from the finished_phases listing (completedAt >= the window's start) and is billed.
        "workload_metrics": ["GPU_ALLOCATION", "CPU_REQUEST_CORES"],
        "timeout": "5s",
        "retry_initial": "100ms",
        "retry_max": "500ms",
    }
    cfg["service"]["pipelines"]["events"]["receivers"].append("runai")
    return cfg


def receiver_health(proc: CollectorProcess) -> dict[str, Any]:
    health = proc.health()
    return health["components"]["receivers"].get("runai", {}) if health else {}


def watermark(proc: CollectorProcess) -> float | None:
    value = receiver_health(proc).get("watermark")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def wait(condition: Callable[[], object], timeout: float, what: str, proc: CollectorProcess) -> None:
    try:
        eventually_sync(condition, timeout=timeout, interval=0.05, message=what)
    except AssertionError as exc:
        raise TimeoutError(f"{exc}\n{proc.log_tail()}") from None


def unix(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).astimezone(UTC).timestamp()


def billed(arrivals: list[dict[str, Any]]) -> dict[tuple[str, float], tuple[float, float]]:
    """(workload id, window start) -> (GPU-seconds, core-seconds), de-duplicated by id.

    An id sent twice must be the same event, byte for byte; every id must be the live one.
    """
    by_id: dict[str, dict[str, Any]] = {}
    for event in arrivals:
        assert event["type"] == "runai_workload"
        data = event["data"]
        assert event["id"] == stable_id("runai", "workload", data["workload_id"], event["time"]), event
        if event["id"] in by_id:
            assert by_id[event["id"]] == event, "one id, two different events"
        by_id[event["id"]] = event
    out: dict[tuple[str, float], tuple[float, float]] = {}
    for event in by_id.values():
        key = (event["data"]["workload_id"], unix(event["time"]))
        assert key not in out, f"{key} billed under two ids"
        out[key] = (
            event["data"].get("gpu_allocation_seconds", 0.0),
            event["data"].get("cpu_request_core_seconds", 0.0),
        )
    return out


def check_truth(
    arrivals: list[dict[str, Any]], workloads: list[Workload], first: float, mark: float
) -> dict[tuple[str, float], tuple[float, float]]:
    """Every window in ``[first, mark)`` billed exactly; nothing before ``first``. Returns what was billed."""
    got = billed(arrivals)
    assert all(start >= first for _, start in got), "a window before the first one collected was billed"
    in_range = {k: v for k, v in got.items() if k[1] < mark and v != (0.0, 0.0)}
    expected = truth(workloads, first, mark)
    assert in_range == expected
    total = (sum(v[0] for v in in_range.values()), sum(v[1] for v in in_range.values()))
    assert total == (
        sum(integral(w.gpu, first, mark) for w in workloads),
        sum(integral(w.cpu, first, mark) for w in workloads),
    )
    return got


@contextmanager
def collector_beside_fakes(tmp_path: Path) -> Iterator[tuple[FakeRunai, FakeOpenMeter, CollectorProcess]]:
    """The fake control plane and the fake OpenMeter in threads; a collector process (not started) between them."""
    with in_thread(app_secret=SECRET) as fake, FakeOpenMeter.in_thread() as openmeter:
        proc = CollectorProcess(tmp_path / "collector", make_config(tmp_path, fake.url, openmeter.url))
        with proc:
            yield fake, openmeter, proc


def start_scenario(fake: FakeRunai, proc: CollectorProcess) -> tuple[float, int, list[Workload], ControlPlane]:
    """Start the collector, let it read a first (empty) window, then start the workloads a little later.

    Returns the first window collected, t0, the workloads and the thread that changes them on time.
    """
    proc.start()
    proc.wait_started(timeout=30)
    wait(lambda: watermark(proc) is not None, 20, "a first window", proc)
    first = watermark(proc)
    assert first is not None
    t0 = math.ceil(time.time()) + 1
    workloads = scenario(t0)
    install(fake, workloads)
    cluster = ControlPlane(fake, workloads)
    cluster.start()
    return first - 1, t0, workloads, cluster


def test_sigkill_and_restart_bill_exactly_the_truth(tmp_path: Path):
    with collector_beside_fakes(tmp_path) as (fake, openmeter, proc):
        first, t0, workloads, cluster = start_scenario(fake, proc)
        wait(lambda: (watermark(proc) or 0) >= t0 + 2, 15, "windows with usage billed before the kill", proc)
        wait(lambda: time.time() >= t0 + 4.5, 10, "mid-run", proc)
        proc.kill()  # SIGKILL mid-window; "late" appears and "short" completes while it is down
        time.sleep(3)  # windows come due meanwhile: backfilled on restart
        proc.start()
        proc.wait_started(timeout=30)
        end = last_change(workloads) + 3
        wait(lambda: (watermark(proc) or 0) >= end, 30, "every change billed", proc)
        mark = watermark(proc)
        proc.wait_drained(timeout=20)
        proc.stop()
        cluster.join(5)
    assert mark is not None
    got = check_truth(openmeter.arrivals, workloads, first, mark)
    # The windows that came due while it was down were billed, the appearing and the completed workload's too.
    assert {("w-late", float(t0 + 5)), ("w-short", float(t0 + 5)), ("w-train", float(t0 + 6))} <= set(got)


def test_api_outage_windows_are_billed_after_exactly(tmp_path: Path):
    with collector_beside_fakes(tmp_path) as (fake, openmeter, proc):
        first, t0, workloads, cluster = start_scenario(fake, proc)
        wait(lambda: time.time() >= t0 + 2, 10, "usage started", proc)
        before = watermark(proc) or 0.0
        fake.fail_next(1_000_000, 503)  # everything, the token included, for three seconds
        wait(lambda: "503" in receiver_health(proc).get("last_error", ""), 10, "the outage reported in /health", proc)
        wait(lambda: time.time() >= t0 + 5, 10, "the end of the outage", proc)
        during = watermark(proc) or 0.0
        fake.fail_next(0, 503)
        end = last_change(workloads) + 3
        wait(lambda: (watermark(proc) or 0) >= end, 30, "every change billed", proc)
        mark = watermark(proc)
        proc.wait_drained(timeout=20)
        proc.stop()
        cluster.join(5)
    # At most the window in flight when the outage began was committed during it; two or more came due meanwhile.
    assert during <= before + 1 and during <= t0 + 2
    assert mark is not None
    check_truth(openmeter.arrivals, workloads, first, mark)
