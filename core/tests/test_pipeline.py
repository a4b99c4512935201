"""Pipeline assembly, fan-out and the hand-off contract, through the testing kit."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel, ConfigDict, Field

from collector.components import Processor
from collector.errors import BackpressureError, PermanentError, RecordError
from collector.hookspecs import hookimpl
from collector.specs import ComponentSpec
from collector.testing import testing_registry


def ev(i: int, subject: str = "cust-1") -> dict:
    return {"specversion": "1.0", "id": f"e{i}", "source": "test", "type": "api-call", "subject": subject}


class TagConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str = Field(description="value of data.tag")
    reject_subject: str | None = Field(None, description="reject events with this subject")


class Tag(Processor[TagConfig]):
    async def process(self, events, meta):
        bad = [
            RecordError(i, "subject not allowed", "subject")
            for i, e in enumerate(events)
            if e.get("subject") == self.config.reject_subject
        ]
        if bad:
            raise PermanentError("rejected", records=bad)
        return [{**e, "data": {"tag": self.config.tag, "pipeline": meta["pipeline"]}} for e in events]


class TagPlugin:
    @hookimpl
    def collector_processors(self):
        return [ComponentSpec("processor", "tag", TagConfig, Tag)]


@pytest.fixture
def registry():
    return testing_registry([("tag", TagPlugin())])


async def test_one_pipeline_end_to_end(run_pipeline):
    async with run_pipeline("receivers: {scripted: {}}\nexporters: {memory: {batch: {period: 0.01}}}") as p:
        await p.receiver().send([ev(1), ev(2)])
        events = await p.exporter().wait_for(2)
    assert [e["id"] for e in events] == ["e1", "e2"]


async def test_receiver_feeds_two_pipelines_and_pipeline_fans_out(run_pipeline, registry):
    yaml_text = """
receivers: {scripted: {}}
processors: {tag/a: {tag: A}, tag/b: {tag: B}}
exporters:
  memory/one: {batch: {period: 0.01}}
  memory/two: {batch: {period: 0.01}}
  memory/three: {batch: {period: 0.01}}
service:
  pipelines:
    first: {receivers: [scripted], processors: [tag/a], exporters: [memory/one, memory/two]}
    second: {receivers: [scripted], processors: [tag/b], exporters: [memory/three]}
"""
    async with run_pipeline(yaml_text, registry=registry) as p:
        await p.receiver().send([ev(1)])
        one = await p.exporter("memory/one").wait_for(1)
        two = await p.exporter("memory/two").wait_for(1)
        three = await p.exporter("memory/three").wait_for(1)
    assert one[0]["data"] == {"tag": "A", "pipeline": "first"}
    assert two[0]["data"] == {"tag": "A", "pipeline": "first"}
    assert three[0]["data"] == {"tag": "B", "pipeline": "second"}


async def test_rejection_in_any_pipeline_commits_nothing(run_pipeline, registry):
    yaml_text = """
receivers: {scripted: {}}
processors: {tag/a: {tag: A}, tag/b: {tag: B, reject_subject: evil}}
exporters: {memory/one: {batch: {period: 0.01}}, memory/two: {batch: {period: 0.01}}}
service:
  pipelines:
    first: {receivers: [scripted], processors: [tag/a], exporters: [memory/one]}
    second: {receivers: [scripted], processors: [tag/b], exporters: [memory/two]}
"""
    async with run_pipeline(yaml_text, registry=registry) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([ev(1), ev(2, subject="evil")])
        assert exc.value.records == [RecordError(1, "subject not allowed", "subject")]
        stats = {eid: r.queue.stats().events for eid, r in p.service.exporters.items()}
        assert stats == {"memory/one": 0, "memory/two": 0}
        m = p.service.telemetry.metrics
        assert m.refused.labels(receiver="scripted", reason="invalid")._value.get() == 2


async def test_emit_returns_only_after_the_commit(run_pipeline):
    async with run_pipeline("receivers: {scripted: {}}\nexporters: {memory: {batch: {period: 5}}}") as p:
        runner = p.service.exporters["memory"]
        committed = asyncio.Event()
        original = runner.queue.put

        async def slow_put(events):
            await asyncio.sleep(0.2)
            await original(events)
            committed.set()

        runner.queue.put = slow_put  # type: ignore[method-assign]
        await p.receiver().send([ev(1)])
        assert committed.is_set(), "emit returned before the queue committed"


async def test_backpressure_refuses_before_any_commit(run_pipeline):
    yaml_text = """
receivers: {scripted: {}}
exporters:
  memory/small: {queue: {kind: memory, max_bytes: 200}, batch: {period: 60, max_events: 1000}}
  memory/big: {batch: {period: 0.01}}
service:
  pipelines:
    p: {receivers: [scripted], exporters: [memory/small, memory/big]}
"""
    async with run_pipeline(yaml_text) as p:
        small = p.service.exporters["memory/small"]
        small.exporter.fail_with = [ConnectionError("down")] * 100  # nothing drains
        await p.receiver().send([ev(i) for i in range(5)])  # fills the small queue
        await asyncio.sleep(0.05)
        with pytest.raises(BackpressureError) as exc:
            await p.receiver().send([ev(99)])
        assert exc.value.retry_after and exc.value.retry_after > 0
        big = await p.exporter("memory/big").wait_for(5)
        await asyncio.sleep(0.1)
        assert "e99" not in {e["id"] for e in big}, "a refused batch must not be committed anywhere"


async def test_graceful_shutdown_drains_what_was_accepted(run_pipeline):
    async with run_pipeline("receivers: {scripted: {}}\nexporters: {memory: {batch: {period: 30}}}") as p:
        await p.receiver().send([ev(i) for i in range(10)])
        exporter = p.exporter()
        assert exporter.events == []  # held by the 30 s batch period
    # leaving the context stopped the service: the sender flushed on the way out
    assert sorted(e["id"] for e in exporter.events) == sorted(f"e{i}" for i in range(10))


async def test_start_order_exporters_first_receivers_last(run_pipeline):
    order: list[str] = []
    from collector.testing.components import MemoryExporter, ScriptedReceiver

    orig_exp, orig_rec = MemoryExporter._start, ScriptedReceiver._start

    async def exp_start(self):
        order.append("exporter")
        await orig_exp(self)

    async def rec_start(self):
        order.append("receiver")
        await orig_rec(self)

    MemoryExporter._start, ScriptedReceiver._start = exp_start, rec_start  # type: ignore[method-assign]
    try:
        async with run_pipeline("receivers: {scripted: {}}\nexporters: {memory: {}}"):
            pass
    finally:
        MemoryExporter._start, ScriptedReceiver._start = orig_exp, orig_rec  # type: ignore[method-assign]
    assert order == ["exporter", "receiver"]
