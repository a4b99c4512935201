"""Pull receivers under a coordinator: fencing mid-window, watermark handover, /ready and /health.

A scripted coordinator stands in for a Lease: a test flips its leadership and
reads or moves the watermark it shares, the way another replica would.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from collector.clock import FakeClock
from collector.components import Coordinator
from collector.hookspecs import hookimpl
from collector.pull import PullReceiver, ScheduleConfig, Window
from collector.specs import ComponentSpec
from collector.testing import eventually, testing_registry

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z


class ScriptedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Scripted(Coordinator[ScriptedConfig]):
    """Leadership and a shared watermark store that the test controls."""

    leading = True
    shared: dict[str, float] = {}
    problem: str | None = None

    def is_leader(self) -> bool:
        return Scripted.leading

    async def load_watermark(self, receiver_id: str) -> float | None:
        return Scripted.shared.get(receiver_id)

    async def save_watermark(self, receiver_id: str, end: float) -> None:
        if not Scripted.leading:
            raise RuntimeError("not leading: the shared watermark stays")
        Scripted.shared[receiver_id] = end

    def health(self) -> dict[str, Any]:
        out = super().health()
        if Scripted.problem:
            out.update(ready=False, reason=Scripted.problem)
        return out


class TickConfig(ScheduleConfig):
    pass


class Tick(PullReceiver[TickConfig]):
    """One event per window; ``gate`` holds a collection open so a test can act in the middle of it."""

    source = "tick"
    gate: asyncio.Event | None = None
    collecting: asyncio.Event | None = None

    async def collect(self, window: Window) -> list[Any]:
        if Tick.gate is not None:
            assert Tick.collecting is not None
            Tick.collecting.set()
            await Tick.gate.wait()
        return [
            {"specversion": "1.0", "id": self.event_id(window), "source": "tick", "type": "tick",
             "subject": "s", "time": window.start_time, "data": {}}
        ]  # fmt: skip


class Plugin:
    @hookimpl
    def collector_receivers(self):
        return [ComponentSpec("receiver", "tick", TickConfig, Tick)]

    @hookimpl
    def collector_coordinators(self):
        return [ComponentSpec("coordinator", "scripted", ScriptedConfig, Scripted)]


YAML = """
receivers: {tick: {interval: 60s, retry_initial: 1s, retry_max: 2s}}
exporters: {memory: {batch: {period: 0.01}}}
coordinators: {scripted: {}}
service:
  coordinator: scripted
  pipelines: {p: {receivers: [tick], exporters: [memory]}}
"""


@pytest.fixture
def registry() -> Any:
    Scripted.leading, Scripted.shared, Scripted.problem = True, {}, None
    Tick.gate = Tick.collecting = None
    return testing_registry([("scripted", Plugin())])


async def advance(clock: FakeClock, seconds: float, step: float = 5.0) -> None:
    for _ in range(int(seconds / step)):
        clock.advance(step)
        await asyncio.sleep(0.005)


async def test_leadership_lost_mid_window_commits_nothing(collector_run_pipeline, registry):
    clock = FakeClock(start=T0 + 5)
    async with collector_run_pipeline(YAML, registry=registry, clock=clock) as p:
        rec = p.service.receivers["tick"]
        await eventually(lambda: rec.watermark == T0, timeout=5)
        assert Scripted.shared["tick"] == T0  # every committed window's watermark is shared
        Tick.gate, Tick.collecting = asyncio.Event(), asyncio.Event()
        clock.advance(60)
        await asyncio.wait_for(Tick.collecting.wait(), 5)
        Scripted.leading = False  # the Lease is lost while the window is being collected
        Tick.gate.set()
        await advance(clock, 10)
        await asyncio.sleep(0.1)
        assert rec.watermark == T0 and Scripted.shared["tick"] == T0
        assert len(p.exporter().events) == 1, "the fenced window must not be committed"
        assert p.metric("collector_leader", receiver="tick") == 0


async def test_new_leader_continues_from_the_shared_watermark(collector_run_pipeline, registry):
    clock = FakeClock(start=T0 + 5)
    async with collector_run_pipeline(YAML, registry=registry, clock=clock) as p:
        rec = p.service.receivers["tick"]
        await eventually(lambda: rec.watermark == T0, timeout=5)
        Scripted.leading = False
        await advance(clock, 10)
        # Meanwhile another replica leads and bills three windows.
        clock.advance(180)
        Scripted.shared["tick"] = T0 + 180
        Scripted.leading = True
        await advance(clock, 10)
        await eventually(lambda: rec.watermark == T0 + 180, timeout=5)
        await asyncio.sleep(0.05)
    times = [e["time"] for e in p.exporter().events]
    # Only the window it led for itself: the three the other replica billed are not billed again.
    assert times == ["2025-12-31T23:59:00.000Z"]


async def test_ready_and_health_show_leadership_and_coordinator_problems(collector_run_pipeline, registry):
    clock = FakeClock(start=T0 + 5)
    async with collector_run_pipeline(YAML, registry=registry, clock=clock) as p:
        health = p.service.health()
        assert health["leader"] is True and health["ready"] is True
        Scripted.leading = False
        health = p.service.health()
        assert health["leader"] is False and health["ready"] is True  # a standby is ready
        Scripted.problem = "lease default/collector: forbidden (403)"
        health = p.service.health()
        assert health["ready"] is False
        assert health["components"]["coordinator"]["scripted"]["reason"] == Scripted.problem
