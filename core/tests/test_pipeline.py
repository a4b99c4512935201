"""Pipeline assembly, fan-out and the hand-off contract, through the testing kit."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel, ConfigDict, Field

from collector.components import Meta, Processor
from collector.errors import BackpressureError, PermanentError, RecordError
from collector.events import CLOUDEVENTS, OPENMETER, strictest
from collector.hookspecs import hookimpl
from collector.mapping import compile_expression
from collector.pull import Window
from collector.specs import ComponentSpec
from collector.testing import eventually, testing_registry


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


async def test_one_pipeline_end_to_end(collector_run_pipeline):
    async with collector_run_pipeline("receivers: {scripted: {}}\nexporters: {memory: {batch: {period: 0.01}}}") as p:
        await p.receiver().send([ev(1), ev(2)])
        events = await p.exporter().wait_for(2)
    assert [e["id"] for e in events] == ["e1", "e2"]


async def test_receiver_feeds_two_pipelines_and_pipeline_fans_out(collector_run_pipeline, registry):
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
    async with collector_run_pipeline(yaml_text, registry=registry) as p:
        await p.receiver().send([ev(1)])
        one = await p.exporter("memory/one").wait_for(1)
        two = await p.exporter("memory/two").wait_for(1)
        three = await p.exporter("memory/three").wait_for(1)
    assert one[0]["data"] == {"tag": "A", "pipeline": "first"}
    assert two[0]["data"] == {"tag": "A", "pipeline": "first"}
    assert three[0]["data"] == {"tag": "B", "pipeline": "second"}


async def test_rejection_in_any_pipeline_commits_nothing(collector_run_pipeline, registry):
    yaml_text = """
receivers: {scripted: {}}
processors: {tag/a: {tag: A}, tag/b: {tag: B, reject_subject: evil}}
exporters: {memory/one: {batch: {period: 0.01}}, memory/two: {batch: {period: 0.01}}}
service:
  pipelines:
    first: {receivers: [scripted], processors: [tag/a], exporters: [memory/one]}
    second: {receivers: [scripted], processors: [tag/b], exporters: [memory/two]}
"""
    async with collector_run_pipeline(yaml_text, registry=registry) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([ev(1), ev(2, subject="evil")])
        assert exc.value.records == [RecordError(1, "subject not allowed", "subject")]
        stats = {eid: r.queue.stats().events for eid, r in p.service.exporters.items()}
        assert stats == {"memory/one": 0, "memory/two": 0}
        m = p.service.telemetry.metrics
        assert m.refused.labels(receiver="scripted", reason="invalid")._value.get() == 2


async def test_emit_returns_only_after_the_commit(collector_run_pipeline):
    async with collector_run_pipeline("receivers: {scripted: {}}\nexporters: {memory: {batch: {period: 5}}}") as p:
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


async def test_backpressure_refuses_before_any_commit(collector_run_pipeline):
    yaml_text = """
receivers: {scripted: {}}
exporters:
  memory/small: {queue: {kind: memory, max_bytes: 200}, batch: {period: 60, max_events: 1000}}
  memory/big: {batch: {period: 0.01}}
service:
  pipelines:
    p: {receivers: [scripted], exporters: [memory/small, memory/big]}
"""
    async with collector_run_pipeline(yaml_text) as p:
        small = p.service.exporters["memory/small"]
        small.exporter.fail_with = [ConnectionError("down")] * 100  # nothing drains
        await p.receiver().send([ev(i) for i in range(5)])  # fills the small queue
        await asyncio.sleep(0.05)
        with pytest.raises(BackpressureError) as exc:
            await p.receiver().send([ev(99)])
        assert exc.value.retry_after and exc.value.retry_after > 0
        # Refused means committed nowhere: the big queue, which had room, took the first five only.
        enqueued = p.service.telemetry.metrics.enqueued.labels(exporter="memory/big")
        assert enqueued._value.get() == 5, "a refused batch must not be committed anywhere"
        big = await p.exporter("memory/big").wait_for(5)
        assert "e99" not in {e["id"] for e in big}


async def test_graceful_shutdown_drains_what_was_accepted(collector_run_pipeline):
    async with collector_run_pipeline("receivers: {scripted: {}}\nexporters: {memory: {batch: {period: 30}}}") as p:
        await p.receiver().send([ev(i) for i in range(10)])
        exporter = p.exporter()
        assert exporter.events == []  # held by the 30 s batch period
    # leaving the context stopped the service: the sender flushed on the way out
    assert sorted(e["id"] for e in exporter.events) == sorted(f"e{i}" for i in range(10))


async def test_start_order_exporters_first_receivers_last(collector_run_pipeline):
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
        async with collector_run_pipeline("receivers: {scripted: {}}\nexporters: {memory: {}}"):
            pass
    finally:
        MemoryExporter._start, ScriptedReceiver._start = orig_exp, orig_rec  # type: ignore[method-assign]
    assert order == ["exporter", "receiver"]


# -- event rules come from the exporters ------------------------------------------------------


def without(event: dict, name: str) -> dict:
    return {k: v for k, v in event.items() if k != name}


def debug_yaml(path) -> str:
    return f"""
receivers: {{scripted: {{}}}}
exporters: {{debug: {{path: "{path}", queue: {{kind: memory}}, batch: {{period: 0.01}}}}}}
"""


async def test_a_pipeline_to_the_debug_exporter_takes_what_openmeter_would_refuse(collector_run_pipeline, tmp_path):
    out = tmp_path / "events.jsonl"
    async with collector_run_pipeline(debug_yaml(out)) as p:
        # No subject: OpenMeter refuses it, a file of CloudEvents does not.
        await p.receiver().send([without(ev(1), "subject")])
        # Not a CloudEvent at all: still refused, naming the record.
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([ev(2), {**ev(3), "type": ""}])
        assert [(r.index, r.field) for r in exc.value.records] == [(1, "type")]
        assert "the CloudEvents event rules" in exc.value.message
        lines = await eventually(lambda: out.exists() and out.read_text().splitlines())
    assert [json.loads(line)["id"] for line in lines] == ["e1"]


async def test_a_pipeline_to_openmeter_refuses_what_openmeter_would_naming_the_record(collector_run_pipeline, tmp_path):
    yaml_text = f"""
receivers: {{scripted: {{}}}}
exporters:
  openmeter: {{url: "http://127.0.0.1:9", queue: {{kind: memory}}, batch: {{period: 60}}}}
  debug: {{path: "{tmp_path / "events.jsonl"}", queue: {{kind: memory}}, batch: {{period: 60}}}}
"""
    async with collector_run_pipeline(yaml_text) as p:
        # OpenMeter's rules include the CloudEvents basics: one check serves both exporters.
        assert p.service.pipelines["test"].rules == (OPENMETER,)
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([ev(1), without(ev(2), "subject")])
        assert [(r.index, r.field) for r in exc.value.records] == [(1, "subject")]
        assert "the OpenMeter event rules" in exc.value.message
        assert {eid: r.queue.stats().events for eid, r in p.service.exporters.items()} == {"openmeter": 0, "debug": 0}


def test_rules_union_keeps_the_strictest_once():
    assert strictest([CLOUDEVENTS, OPENMETER, CLOUDEVENTS]) == (OPENMETER,)
    assert strictest([CLOUDEVENTS]) == (CLOUDEVENTS,)
    assert strictest([]) == ()


# -- partial acceptance -----------------------------------------------------------------------

TWO_PIPELINES = """
receivers: {scripted: {}}
processors: {tag/a: {tag: A}, tag/b: {tag: B, reject_subject: evil}}
exporters: {memory/one: {batch: {period: 30}}, memory/two: {batch: {period: 30}}}
service:
  pipelines:
    first: {receivers: [scripted], processors: [tag/a], exporters: [memory/one]}
    second: {receivers: [scripted], processors: [tag/b], exporters: [memory/two]}
"""


def receiver_counts(p) -> dict[str, float]:
    m = p.service.telemetry.metrics
    return {
        "received": m.received.labels(receiver="scripted")._value.get(),
        "accepted": m.accepted.labels(receiver="scripted")._value.get(),
        "invalid": m.refused.labels(receiver="scripted", reason="invalid")._value.get(),
    }


async def test_partial_emit_commits_the_valid_records_once_and_reports_the_rest(collector_run_pipeline, registry):
    # Record 1 is refused by a processor of the second pipeline, record 3 by the
    # first pipeline's final check (a bad time): neither may reach any queue.
    batch = [ev(0), ev(1, subject="evil"), ev(2), {**ev(3), "time": "yesterday"}]
    async with collector_run_pipeline(TWO_PIPELINES, registry=registry) as p:
        result = await p.receiver().send(batch, partial=True)
        counts = receiver_counts(p)
        one, two = p.exporter("memory/one"), p.exporter("memory/two")
    # Leaving the context drained both queues: they held these records, each once.
    assert sorted(e["id"] for e in one.events) == ["e0", "e2"]
    assert sorted(e["id"] for e in two.events) == ["e0", "e2"]
    assert result.accepted == 2
    assert [(e.index, e.field) for e in result.rejected] == [(1, "subject"), (3, "time")]
    assert result.rejected_indexes == {1, 3}
    assert counts == {"received": 4, "accepted": 2, "invalid": 2}


async def test_partial_emit_with_nothing_valid_commits_nothing(collector_run_pipeline, registry):
    async with collector_run_pipeline(TWO_PIPELINES, registry=registry) as p:
        result = await p.receiver().send([ev(0, subject="evil"), without(ev(1), "id")], partial=True)
        assert {eid: r.queue.stats().events for eid, r in p.service.exporters.items()} == {
            "memory/one": 0,
            "memory/two": 0,
        }
        assert (result.accepted, sorted(result.rejected_indexes)) == (0, [0, 1])
        assert receiver_counts(p) == {"received": 2, "accepted": 0, "invalid": 2}


async def test_all_or_nothing_emit_is_unchanged_by_partial_support(collector_run_pipeline, registry):
    async with collector_run_pipeline(TWO_PIPELINES, registry=registry) as p:
        result = await p.receiver().send([ev(0), ev(1)])
        assert (result.accepted, result.rejected) == (2, ())
        with pytest.raises(PermanentError):
            await p.receiver().send([ev(2), ev(3, subject="evil")])
        assert receiver_counts(p) == {"received": 4, "accepted": 2, "invalid": 2}


# -- typed metadata ---------------------------------------------------------------------------


def test_mapping_expressions_read_the_typed_meta():
    window = Window(1714564800.0, 1714568400.0)
    meta = Meta(
        receiver="prometheus", pipeline="usage", window=window, headers={"x-tenant-id": "t1"}, extra={"signal": "log"}
    )
    read = compile_expression(
        '[meta.receiver, meta.pipeline, meta.headers["x-tenant-id"], meta.signal, meta.window_start,'
        ' meta.interval_seconds, meta["window_end_unix"], meta.processor, meta.nothing, meta["nothing"]]'
    )
    assert read({}, meta) == [
        "prometheus", "usage", "t1", "log", "2024-05-01T12:00:00.000Z", 3600.0, 1714568400.0, None, None, None,
    ]  # fmt: skip
    assert Meta.of({"receiver": "r", "tenant": "t"}).lookup("tenant") == "t"
