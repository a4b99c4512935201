"""The ``runai`` receiver end to end: fake control plane, real pipeline, known truth.

The receiver runs in-process with a FakeClock; the fake control plane's
metric series are step functions in that fake time, so the truth of each
window is known: a workload whose GPU allocation changes inside a window is
billed exactly allocation x seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import collector_plugin_runai
import pytest
import yaml
from fakerunai import FakeRunai

from collector.clock import FakeClock
from collector.pull import Window
from collector.testing import eventually, testing_registry

T0 = 1_796_558_400.0  # 2026-12-06T12:00:00Z, a window boundary
W = 60.0
SECRET = "s3cret-do-not-log"


@pytest.fixture
def registry() -> Any:
    return testing_registry([("runai-under-test", collector_plugin_runai)])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=T0 + W + 6)


@pytest.fixture
async def runai(clock: FakeClock) -> AsyncIterator[FakeRunai]:
    fake = FakeRunai(app_secret=SECRET, time=clock.time)
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


def config(url: str, **receiver: Any) -> str:
    settings = {
        "url": url,
        "app_id": "collector",
        "app_secret": SECRET,
        "interval": "60s",
        "offset": "5s",
        "resolution": "1s",
        "retry_initial": "0.05s",
        "retry_max": "0.2s",
        **receiver,
    }
    return yaml.safe_dump({"receivers": {"runai": settings}, "exporters": {"memory": {"batch": {"period": 0.01}}}})


async def drive(clock: FakeClock, rec: Any, watermark: float, timeout: float = 15.0) -> None:
    def step() -> bool:
        if rec.watermark is not None and rec.watermark >= watermark:
            return True
        if clock.time() < watermark + rec.offset + W / 2:
            clock.advance(0.5)
        return False

    await eventually(step, timeout=timeout, interval=0.02, message=f"watermark {watermark}")


def start_of(t: float) -> str:
    return Window(t, t + W).start_time


async def test_allocation_change_inside_a_window_is_billed_exactly(collector_run_pipeline, registry, runai, clock):
    runai.add_workload("w1", name="train", project="vision", department="research", created=T0 - 600)
    # 2 GPUs from T0+10, 4 GPUs from T0+40; 8 cores requested throughout; utilisation 50%.
    runai.set_series("workloads", "w1", "GPU_ALLOCATION", [(T0 + 10, 2), (T0 + 40, 4)])
    runai.set_series("workloads", "w1", "CPU_REQUEST_CORES", [(T0 + 10, 8)])
    runai.set_series("workloads", "w1", "GPU_UTILIZATION", [(T0 + 10, 50)])
    cfg = config(runai.url, workload_metrics=["GPU_ALLOCATION", "CPU_REQUEST_CORES", "GPU_UTILIZATION",
                                              "CPU_USAGE_CORES"])  # fmt: skip
    async with collector_run_pipeline(cfg, registry=registry, clock=clock) as p:
        rec = p.service.receivers["runai"]
        await drive(clock, rec, T0 + 2 * W)
        events = await p.exporter().wait_for(2)
        missing = p.metric(
            "collector_runai_missing_measurements_total",
            receiver="runai",
            resource="workload",
            metric="CPU_USAGE_CORES",
        )
    by_time = {e["time"]: e for e in events}
    first = by_time[start_of(T0)]
    assert first["subject"] == "vision" and first["type"] == "runai_workload"
    data = first["data"]
    assert data["gpu_allocation_seconds"] == 2 * 30 + 4 * 20
    assert data["seconds"] == 50
    assert data["gpu_allocation_avg"] == pytest.approx(140 / 50)
    assert data["cpu_request_core_seconds"] == 8 * 50
    assert data["gpu_utilization_avg"] == 50
    assert "cpu_usage_core_seconds" not in data and "cpu_usage_cores_avg" not in data  # missing, not 0
    assert data["department"] == "research" and data["workload"] == "train"
    assert by_time[start_of(T0 + W)]["data"]["gpu_allocation_seconds"] == 4 * 60
    assert missing == 2  # one per window


async def test_ids_are_the_same_when_windows_are_read_again(collector_run_pipeline, registry, runai, tmp_path):
    runai.add_workload("w1", name="train", created=T0 - 600)
    runai.set_series("workloads", "w1", "GPU_ALLOCATION", [(T0, 1)])
    runs = []
    for attempt in range(2):
        clock = FakeClock(start=T0 + W + 6)
        storage = tmp_path / f"s{attempt}"
        cfg = config(runai.url, workload_metrics=["GPU_ALLOCATION"])
        async with collector_run_pipeline(cfg, registry=registry, clock=clock, storage_dir=storage) as p:
            await drive(clock, p.service.receivers["runai"], T0 + W)
            runs.append(await p.exporter().wait_for(1))
    assert [e["id"] for e in runs[0]] == [e["id"] for e in runs[1]]


async def test_a_failing_call_fails_the_whole_window_then_it_is_retried(collector_run_pipeline, registry, runai, clock):
    for i in range(5):
        runai.add_workload(f"w{i}", name=f"train-{i}", created=T0 - 600)
        runai.set_series("workloads", f"w{i}", "GPU_ALLOCATION", [(T0, 1)])
    runai.fail_next(30, 500, path="/api/v1/workloads/w3/metrics")
    cfg = config(runai.url, workload_metrics=["GPU_ALLOCATION"], retries=2)
    async with collector_run_pipeline(cfg, registry=registry, clock=clock) as p:
        rec = p.service.receivers["runai"]
        await eventually(lambda: rec.last_error and "w3" in rec.last_error, timeout=10)
        assert p.exporter().events == [] and rec.watermark is None  # nothing of the window is committed
        await drive(clock, rec, T0 + W, timeout=30)
        events = await p.exporter().wait_for(5)
    assert sorted(e["data"]["workload"] for e in events) == [f"train-{i}" for i in range(5)]
    assert all(e["data"]["gpu_allocation_seconds"] == 60 for e in events)


async def test_rate_limits_are_retried_and_the_secret_is_never_logged(
    collector_run_pipeline, registry, runai, clock, caplog
):
    caplog.set_level(logging.DEBUG)
    runai.add_workload("w1", name="train", created=T0 - 600)
    runai.set_series("workloads", "w1", "GPU_ALLOCATION", [(T0, 3)])
    runai.fail_next(2, 429, retry_after=0)
    async with collector_run_pipeline(config(runai.url), registry=registry, clock=clock) as p:
        await drive(clock, p.service.receivers["runai"], T0 + W)
        events = await p.exporter().wait_for(1)
    assert events[0]["data"]["gpu_allocation_seconds"] == 180
    assert SECRET not in caplog.text


async def test_wrong_secret_is_a_clear_auth_error_in_health(collector_run_pipeline, registry, runai, clock):
    cfg = yaml.safe_load(config(runai.url))
    cfg["receivers"]["runai"]["app_secret"] = "wrong"
    async with collector_run_pipeline(yaml.safe_dump(cfg), registry=registry, clock=clock) as p:
        rec = p.service.receivers["runai"]
        await eventually(lambda: rec.health().get("reason"), timeout=10)
        reason = rec.health()["reason"]
        assert "401" in reason and "wrong" not in reason
        assert rec.watermark is None


async def test_pods_are_billed_with_their_workloads_department(collector_run_pipeline, registry, runai, clock):
    runai.add_workload("w1", name="train", project="vision", department="research", created=T0 - 600)
    runai.add_pod("p1", "w1", name="train-0-0", node="gpu-7", created=T0 - 600)
    runai.set_series("pods", "p1", "CPU_USAGE_CORES", [(T0 + 30, 2)])
    cfg = config(
        runai.url, resources=["pods"], pod_metrics=["CPU_USAGE_CORES", "GPU_UTILIZATION"], subject="department"
    )
    async with collector_run_pipeline(cfg, registry=registry, clock=clock) as p:
        await drive(clock, p.service.receivers["runai"], T0 + W)
        events = await p.exporter().wait_for(1)
    event = events[0]
    assert event["type"] == "runai_pod" and event["subject"] == "research"
    assert event["data"]["cpu_usage_core_seconds"] == 60 and event["data"]["node"] == "gpu-7"


def test_workload_only_metric_for_pods_is_a_config_error(registry):
    from collector.config import load_config
    from collector.errors import ConfigError

    with pytest.raises(ConfigError, match="GPU_ALLOCATION"):
        load_config(config("https://runai.example", pod_metrics=["GPU_ALLOCATION"]), registry, source="<test>")


async def test_outage_windows_are_backfilled(collector_run_pipeline, registry, runai, clock, tmp_path):
    runai.add_workload("w1", name="train", created=T0 - 600)
    runai.set_series("workloads", "w1", "GPU_ALLOCATION", [(T0, 1), (T0 + 2 * W, 2)])
    storage = tmp_path / "storage"
    cfg = config(runai.url, workload_metrics=["GPU_ALLOCATION"])
    async with collector_run_pipeline(cfg, registry=registry, clock=clock, storage_dir=storage) as p:
        rec = p.service.receivers["runai"]
        await drive(clock, rec, T0 + W)
        runai.fail_next(10_000, 503)  # the control plane goes down for three windows
        clock.advance(3 * W)
        await asyncio.sleep(0.3)
        assert rec.watermark == T0 + W
        runai.fail_next(0, 503)
        await drive(clock, rec, T0 + 4 * W, timeout=30)
        events = await p.exporter().wait_for(4)
    assert [e["data"]["gpu_allocation_seconds"] for e in sorted(events, key=lambda e: e["time"])] == [60, 60, 120, 120]


async def test_workloads_created_after_the_window_cost_no_metrics_call(collector_run_pipeline, registry, runai, clock):
    runai.add_workload("old", name="old", created=T0 - 600)
    runai.add_workload("new", name="new", created=T0 + W + 1)  # after the first window
    runai.set_series("workloads", "old", "GPU_ALLOCATION", [(T0, 1)])
    cfg = config(runai.url, workload_metrics=["GPU_ALLOCATION"])
    async with collector_run_pipeline(cfg, registry=registry, clock=clock) as p:
        await drive(clock, p.service.receivers["runai"], T0 + W)
        events = await p.exporter().wait_for(1)
    assert [e["data"]["workload"] for e in events] == ["old"]
    assert not any(path.startswith("/api/v1/workloads/new/") for _, path, _ in runai.requests)


async def test_a_workload_that_finished_before_its_window_was_read_is_still_billed(
    collector_run_pipeline, registry, runai, clock
):
    runai.add_workload("done", name="batch", created=T0 - 600)
    runai.add_workload("gone", name="old-batch", created=T0 - 600)
    runai.set_series("workloads", "done", "GPU_ALLOCATION", [(T0 + 10, 2), (T0 + 50, 0)])
    runai.set_phase("done", "Completed")  # at T0+66: after the window ended, before it is read
    cfg = config(runai.url, workload_metrics=["GPU_ALLOCATION"])
    async with collector_run_pipeline(cfg, registry=registry, clock=clock) as p:
        await drive(clock, p.service.receivers["runai"], T0 + W)
        events = await p.exporter().wait_for(1)
    assert [(e["data"]["workload"], e["data"]["gpu_allocation_seconds"]) for e in events] == [("batch", 80)]
    listed = [q for _, path, q in runai.requests if path == "/api/v1/workloads"]
    assert any("completedAt>=2026-12-06T12:00:00.000Z" in q.get("filterBy", []) for q in listed), listed
