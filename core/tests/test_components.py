"""Component lifecycle, the fake clock and the testing kit fixtures."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from collector.clock import FakeClock
from collector.components import Component, ComponentContext
from collector.errors import BackpressureError
from collector.runtime.queue.memory import MemoryQueue
from collector.telemetry import Telemetry


class Empty(BaseModel):
    pass


class Probe(Component[Empty]):
    def __init__(self, ctx, config, *, fail=False, slow=0.0):
        super().__init__(ctx, config)
        self.starts = self.stops = 0
        self.fail, self.slow = fail, slow

    async def _start(self):
        self.starts += 1
        if self.fail:
            raise RuntimeError("cannot bind")

    async def _shutdown(self):
        self.stops += 1
        await asyncio.sleep(self.slow)


def probe(tmp_path, **kw) -> Probe:
    ctx = ComponentContext("probe/x", "receiver", tmp_path, Telemetry())
    return Probe(ctx, Empty(), **kw)


async def test_start_and_shutdown_are_idempotent(tmp_path):
    p = probe(tmp_path)
    await p.start()
    await p.start()
    assert (p.starts, p.state) == (1, "running")
    await p.shutdown(1)
    await p.shutdown(1)
    assert (p.stops, p.state) == (1, "stopped")


async def test_failed_start_is_reported_in_health(tmp_path):
    p = probe(tmp_path, fail=True)
    with pytest.raises(RuntimeError):
        await p.start()
    assert p.health() == {"state": "failed", "ready": False, "last_error": "RuntimeError: cannot bind"}


async def test_shutdown_is_bounded_by_its_timeout(tmp_path, caplog):
    p = probe(tmp_path, slow=10)
    await p.start()
    t0 = asyncio.get_running_loop().time()
    await p.shutdown(0.2)
    assert asyncio.get_running_loop().time() - t0 < 1.0
    assert p.state == "stopped"
    assert "shutdown did not finish within 0.2s" in caplog.text


async def test_fake_clock_moves_only_when_told():
    clock = FakeClock(start=1000.0)
    woke: list[float] = []

    async def sleeper():
        await clock.sleep(5)
        woke.append(clock.time())

    task = asyncio.create_task(sleeper())
    await asyncio.sleep(0.01)
    clock.advance(4)
    await asyncio.sleep(0.01)
    assert woke == []
    clock.advance(1)
    await task
    assert woke == [1005.0]


async def test_memory_queue_contract():
    q = MemoryQueue(max_bytes=300)
    await q.put([{"id": "a"}])
    item = q.get(0.1)
    assert item is not None and item.events == [{"id": "a"}]
    assert q.get(0.01) is None  # claimed items are not handed out twice
    q.release(item.id)
    again = q.get(0.1)
    assert again is not None and again.id == item.id
    q.ack(again.id)
    assert q.stats().events == 0
    await q.put([{"id": "x" * 100}])
    await q.put([{"id": "y" * 100}])
    with pytest.raises(BackpressureError):
        await q.put([{"id": "z" * 100}])


def test_fixtures_from_the_pytest_plugin(collector_storage, collector_fake_clock, collector_registry):
    assert collector_storage.is_dir() and list(collector_storage.iterdir()) == []
    assert collector_fake_clock.time() == 1_700_000_000.0
    assert collector_registry.component("exporter", "memory").type == "memory"
    assert collector_registry.component("receiver", "scripted").type == "scripted"


async def test_scripted_receiver_batches_emitted_at_start(collector_run_pipeline):
    yaml_text = """
receivers:
  scripted:
    batches: [[{specversion: "1.0", id: "a", source: s, type: t, subject: u}]]
exporters: {memory: {batch: {period: 0.01}}}
"""
    async with collector_run_pipeline(yaml_text) as p:
        assert [e["id"] for e in await p.exporter().wait_for(1)] == ["a"]
