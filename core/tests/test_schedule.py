"""Pull-receiver framework: windows, watermarks, backfill, retries, leadership (fake clock)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import Field

from collector.clock import FakeClock
from collector.hookspecs import hookimpl
from collector.pull import CronSchedule, IntervalSchedule, PullReceiver, ScheduleConfig, Window
from collector.specs import ComponentSpec
from collector.testing import testing_registry

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class CountConfig(ScheduleConfig):
    fail_windows: int = Field(0, description="fail this many attempts first")


class CountReceiver(PullReceiver[CountConfig]):
    """Emits one event per window whose value is the window length."""

    source = "test-pull"
    calls: list[Window] = []

    def __init__(self, ctx: Any, config: CountConfig) -> None:
        super().__init__(ctx, config)
        self.failures_left = config.fail_windows

    async def collect(self, window: Window) -> list[Any]:
        CountReceiver.calls.append(window)
        if self.failures_left > 0:
            self.failures_left -= 1
            raise ConnectionError("source down")
        return [
            {"specversion": "1.0", "id": self.event_id(window, "k"), "source": self.source, "type": "count",
             "subject": "s", "time": window.start_time, "data": {"seconds": window.seconds}}
        ]  # fmt: skip


class Plugin:
    @hookimpl
    def collector_receivers(self):
        return [ComponentSpec("receiver", "count", CountConfig, CountReceiver)]


@pytest.fixture
def registry():
    CountReceiver.calls = []
    return testing_registry([("count", Plugin())])


def yaml_for(extra: str = "") -> str:
    return (
        "receivers: {count: {interval: 60s, retry_initial: 1s, retry_max: 2s" + extra + "}}\n"
        "exporters: {memory: {batch: {period: 0.01}}}\n"
    )


async def settle(clock: FakeClock, seconds: float, step: float = 5.0) -> None:
    """Advance the fake clock in steps, letting the loop run between them."""
    t = 0.0
    while t < seconds:
        clock.advance(step)
        t += step
        for _ in range(3):
            await asyncio.sleep(0.005)


def test_interval_windows_are_epoch_aligned():
    s = IntervalSchedule(300)
    assert s.end_at_or_before(T0 + 299) == T0
    assert s.next_end(T0) == T0 + 300
    assert [(w.start, w.end) for w in s.windows(T0, T0 + 900)] == [
        (T0, T0 + 300), (T0 + 300, T0 + 600), (T0 + 600, T0 + 900)
    ]  # fmt: skip


def test_cron_with_seconds_field():
    s = CronSchedule("0 */15 * * * *")
    assert s.next_end(T0) == T0 + 900
    assert s.window_ending(T0 + 900) == Window(T0, T0 + 900)


def test_schedule_config_errors():
    with pytest.raises(ValueError, match="not a cron expression"):
        ScheduleConfig(cron="every minute")
    with pytest.raises(ValueError, match="set interval or cron, not both"):
        ScheduleConfig(interval="1m", cron="* * * * *")
    with pytest.raises(ValueError, match="not a duration"):
        ScheduleConfig(interval="sixty")


async def test_windows_in_order_with_watermark_and_meta(collector_run_pipeline, registry, collector_storage):
    clock = FakeClock(start=T0 + 30)
    async with collector_run_pipeline(yaml_for(), registry=registry, clock=clock) as p:
        await settle(clock, 180)
        rec = p.service.receivers["count"]
        events = await p.exporter().wait_for(3)
        assert rec.watermark == T0 + 180
    # The first start has no history: it begins with the last complete window (ending at T0).
    starts = [e["time"] for e in events]
    assert starts[:3] == ["2025-12-31T23:59:00.000Z", "2026-01-01T00:00:00.000Z", "2026-01-01T00:01:00.000Z"]
    assert CountReceiver.calls[0] == Window(T0 - 60, T0)
    assert all(e["data"] == {"seconds": 60.0} for e in events)


async def test_restart_backfills_missed_windows_with_identical_ids(collector_run_pipeline, registry, collector_storage):
    clock = FakeClock(start=T0 + 30)
    async with collector_run_pipeline(yaml_for(), registry=registry, clock=clock) as p:
        await settle(clock, 90)
        first = await p.exporter().wait_for(2)
    clock.advance(600)  # down for ten minutes
    async with collector_run_pipeline(yaml_for(), registry=registry, clock=clock) as p:
        await settle(clock, 5)
        second = await p.exporter().wait_for(10)
    ids = [e["id"] for e in first + second]
    assert len(ids) == len(set(ids)), "no window twice"
    times = sorted(e["time"] for e in first + second)
    expected = ["2025-12-31T23:59:00.000Z"] + [f"2026-01-01T00:{m:02d}:00.000Z" for m in range(len(times) - 1)]
    assert len(times) >= 11 and times == expected  # contiguous across the restart: nothing lost, nothing twice


async def test_windows_beyond_max_backfill_are_counted_not_silent(collector_run_pipeline, registry, caplog):
    clock = FakeClock(start=T0 + 30)
    async with collector_run_pipeline(yaml_for(", max_backfill: 5m"), registry=registry, clock=clock) as p:
        await settle(clock, 60)
    clock.advance(3600)
    async with collector_run_pipeline(yaml_for(", max_backfill: 5m"), registry=registry, clock=clock) as p:
        await settle(clock, 3)
        metrics = p.service.telemetry.metrics.registry
        skipped = metrics.get_sample_value("collector_pull_skipped_windows_total", {"receiver": "count"})
        events = await p.exporter().wait_for(5)
    assert skipped == 55  # 60 missed, the newest 5 (max_backfill=5m) collected
    assert "55 window(s) older than max_backfill=5m were skipped" in caplog.text
    assert len(events) == 5


async def test_failed_window_is_retried_until_it_succeeds(collector_run_pipeline, registry):
    clock = FakeClock(start=T0 + 30)
    async with collector_run_pipeline(yaml_for(", fail_windows: 3"), registry=registry, clock=clock) as p:
        await settle(clock, 20)
        events = await p.exporter().wait_for(1)
        metrics = p.service.telemetry.metrics.registry
        failures = metrics.get_sample_value("collector_pull_windows_total", {"receiver": "count", "outcome": "failure"})
    assert failures == 3
    assert CountReceiver.calls[:4] == [Window(T0 - 60, T0)] * 4  # the same window, until it succeeded
    assert events[0]["time"] == "2025-12-31T23:59:00.000Z"


async def test_backfill_reemits_windows_with_the_same_ids(registry, collector_storage, collector_run_pipeline, capsys):
    import argparse

    from collector.cli.backfill import run_backfill
    from collector.config import load_config
    from collector.testing.components import MemoryExporter

    clock = FakeClock(start=T0 + 30)
    async with collector_run_pipeline(yaml_for(), registry=registry, clock=clock) as p:
        await settle(clock, 180)
        live = {e["time"]: e["id"] for e in await p.exporter().wait_for(4)}
        watermark = p.service.receivers["count"].watermark
    text = yaml_for() + (
        f"storage: {{directory: {collector_storage}}}\n"
        "service: {telemetry: {endpoint: null}, pipelines: {p: {receivers: [count], exporters: [memory]}}}\n"
    )
    loaded = load_config(text, registry)
    args = argparse.Namespace(
        receiver="count", start="2026-01-01T00:00:00Z", end="2026-01-01T00:03:00Z",
        timeout=10.0, retries=2, no_progress=True,
    )  # fmt: skip
    assert await run_backfill(args, loaded, registry) == 0
    replayed = {e["time"]: e["id"] for e in MemoryExporter.instances["memory"].events}
    assert sorted(replayed) == ["2026-01-01T00:00:00.000Z", "2026-01-01T00:01:00.000Z", "2026-01-01T00:02:00.000Z"]
    assert all(live[t] == i for t, i in replayed.items() if t in live), "a backfill sends the live ids"
    assert "backfill count: 3 window(s)" in capsys.readouterr().out
    # The live watermark is untouched: the backfill ran on its own storage.
    from collector.state import StateStore

    store = StateStore(collector_storage / "receivers" / "count" / "state.sqlite")
    assert store.get("watermark", "count") == watermark
    store.close()
