"""The dedupe processor: drops repeats within a window, records keys only for committed data."""

from __future__ import annotations

import asyncio

import pytest

from collector.builtin.processors.dedupe import NAMESPACE, STATE_FILE
from collector.clock import FakeClock
from collector.errors import BackpressureError, PermanentError
from collector.state import StateStore
from collector.testing import eventually

FAST = "exporters: {memory: {batch: {period: 0.01}}}\n"


def ev(i: int, **extra: object) -> dict:
    return {"specversion": "1.0", "id": f"e{i}", "source": "test", "type": "api-call", "subject": "cust-1", **extra}


def config(dedupe: str = "{}", more: str = "") -> str:
    return f"receivers: {{scripted: {{}}}}\nprocessors:\n  dedupe: {dedupe}\n{more}{FAST}"


def dropped(p, reason: str, processor: str = "dedupe") -> float:
    return p.service.telemetry.metrics.dropped.labels(processor=processor, reason=reason)._value.get()


async def settle_queue(p) -> None:
    """Wait until the memory exporter has everything that was committed."""
    enqueued = p.service.telemetry.metrics.enqueued.labels(exporter="memory")
    await eventually(lambda: len(p.exporter().events) >= enqueued._value.get(), message="the queue drains")


async def test_duplicates_within_a_batch_and_across_batches_are_dropped(collector_run_pipeline, collector_fake_clock):
    async with collector_run_pipeline(config(), clock=collector_fake_clock) as p:
        await p.receiver().send([ev(1), ev(2), ev(1), ev(3), ev(2)])
        await p.receiver().send([ev(3), ev(4), ev(1)])
        await p.exporter().wait_for(4)
        await settle_queue(p)
        assert dropped(p, "duplicate") == 4
    assert [e["id"] for e in p.exporter().events] == ["e1", "e2", "e3", "e4"]


async def test_the_same_id_from_another_source_is_not_a_duplicate(collector_run_pipeline, collector_fake_clock):
    async with collector_run_pipeline(config(), clock=collector_fake_clock) as p:
        await p.receiver().send([ev(1), ev(1, source="other")])
        events = await p.exporter().wait_for(2)
    assert [(e["source"], e["id"]) for e in events] == [("test", "e1"), ("other", "e1")]


async def test_keys_survive_a_restart(collector_run_pipeline, collector_fake_clock, collector_storage):
    async with collector_run_pipeline(config(), clock=collector_fake_clock) as p:
        await p.receiver().send([ev(1), ev(2)])
        await p.exporter().wait_for(2)
    async with collector_run_pipeline(config(), clock=collector_fake_clock) as p:
        await p.receiver().send([ev(2), ev(3), ev(1)])
        await p.exporter().wait_for(1)
        await settle_queue(p)
        assert dropped(p, "duplicate") == 2
    assert [e["id"] for e in p.exporter().events] == ["e3"]
    store = StateStore(collector_storage / "processors" / "dedupe" / "test" / STATE_FILE)
    assert store.count(NAMESPACE) == 3
    store.close()


async def test_keys_expire_after_the_window(collector_run_pipeline, collector_fake_clock):
    async with collector_run_pipeline(config("{window: 1h}"), clock=collector_fake_clock) as p:
        await p.receiver().send([ev(1)])
        collector_fake_clock.advance(3599)
        await p.receiver().send([ev(1)])  # still within the hour: dropped
        collector_fake_clock.advance(2)
        await p.receiver().send([ev(1)])  # the key expired: passed on again
        await p.exporter().wait_for(2)
        await settle_queue(p)
        assert dropped(p, "duplicate") == 1
    assert [e["id"] for e in p.exporter().events] == ["e1", "e1"]


async def test_a_rejected_batch_does_not_record_its_keys(collector_run_pipeline, collector_fake_clock):
    async with collector_run_pipeline(config(), clock=collector_fake_clock) as p:
        bad = ev(2)
        del bad["subject"]  # refused by the final validation, after dedupe ran
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([ev(1), bad])
        assert [r.index for r in exc.value.records] == [1]
        # the client fixes its record and retries: nothing of it may be dropped
        await p.receiver().send([ev(1), ev(2)])
        events = await p.exporter().wait_for(2)
        assert dropped(p, "duplicate") == 0
    assert [e["id"] for e in events] == ["e1", "e2"]


async def test_a_later_processor_rejecting_does_not_poison_the_keys(collector_run_pipeline, collector_fake_clock):
    more = "  validate: {}\n"
    async with collector_run_pipeline(config("{}", more), clock=collector_fake_clock) as p:
        with pytest.raises(PermanentError):
            await p.receiver().send([ev(1), {**ev(2), "time": "yesterday"}])
        await p.receiver().send([ev(1), ev(2)])
        events = await p.exporter().wait_for(2)
    assert [e["id"] for e in events] == ["e1", "e2"]


async def test_a_refused_commit_does_not_poison_the_keys(collector_run_pipeline, collector_fake_clock):
    async with collector_run_pipeline(config(), clock=collector_fake_clock) as p:
        runner = p.service.exporters["memory"]
        original = runner.check_capacity
        calls = {"n": 0}

        def refuse_once() -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise BackpressureError("queue full", retry_after=1.0)
            original()

        runner.check_capacity = refuse_once  # type: ignore[method-assign]
        with pytest.raises(BackpressureError):
            await p.receiver().send([ev(1)])
        await p.receiver().send([ev(1)])
        events = await p.exporter().wait_for(1)
    assert [e["id"] for e in events] == ["e1"]


async def test_a_concurrent_retry_waits_for_the_first_attempt(collector_run_pipeline, collector_fake_clock):
    """A retry racing its own first attempt is dropped when that attempt commits."""
    async with collector_run_pipeline(config(), clock=collector_fake_clock) as p:
        runner = p.service.exporters["memory"]
        original = runner.queue.put
        release = asyncio.Event()

        puts: list[list[str]] = []

        async def slow_put(events):
            puts.append([e["id"] for e in events])
            await release.wait()
            await original(events)

        runner.queue.put = slow_put  # type: ignore[method-assign]
        first = asyncio.create_task(p.receiver().send([ev(1), ev(2)]))
        await eventually(lambda: puts == [["e1", "e2"]], message="the first call is committing")
        second = asyncio.create_task(p.receiver().send([ev(2), ev(3)]))
        await asyncio.sleep(0.05)  # room for the retry to run; it must stop before the queue
        assert puts == [["e1", "e2"]], "the retry must wait while e2 is in flight"
        release.set()
        await asyncio.gather(first, second)
        assert puts == [["e1", "e2"], ["e3"]], "once e2 is committed, the retry passes e3 only"
        await p.exporter().wait_for(3)
        await settle_queue(p)
    assert sorted(e["id"] for e in p.exporter().events) == ["e1", "e2", "e3"]


async def test_a_concurrent_retry_goes_through_when_the_first_attempt_fails(
    collector_run_pipeline, collector_fake_clock
):
    async with collector_run_pipeline(config(), clock=collector_fake_clock) as p:
        runner = p.service.exporters["memory"]
        original = runner.queue.put
        release = asyncio.Event()
        calls = {"n": 0}

        async def fail_first(events):
            calls["n"] += 1
            if calls["n"] == 1:
                await release.wait()
                raise BackpressureError("disk full", retry_after=1.0)
            await original(events)

        runner.queue.put = fail_first  # type: ignore[method-assign]
        first = asyncio.create_task(p.receiver().send([ev(1)]))
        await eventually(lambda: calls["n"] == 1, message="the first call is committing")
        second = asyncio.create_task(p.receiver().send([ev(1)]))
        await asyncio.sleep(0.05)
        release.set()
        with pytest.raises(BackpressureError):
            await first
        await second
        events = await p.exporter().wait_for(1)
    assert [e["id"] for e in events] == ["e1"]


async def test_a_key_expression(collector_run_pipeline, collector_fake_clock):
    dedupe = '{key: "[this.subject, this.data.request_id]"}'
    async with collector_run_pipeline(config(dedupe), clock=collector_fake_clock) as p:
        await p.receiver().send(
            [
                ev(1, data={"request_id": "r1"}),
                ev(2, data={"request_id": "r1"}),  # another id, same request: a duplicate
                ev(3, data={"request_id": "r2"}),
                ev(4, data={}),  # key [subject, None]: a key like any other
                ev(5, data={}),
            ]
        )
        await p.exporter().wait_for(3)
        await settle_queue(p)
        assert dropped(p, "duplicate") == 2
    assert [e["id"] for e in p.exporter().events] == ["e1", "e3", "e4"]


async def test_a_none_key_passes_unchecked(collector_run_pipeline, collector_fake_clock):
    async with collector_run_pipeline(config("{key: this.data.request_id}"), clock=collector_fake_clock) as p:
        await p.receiver().send([ev(1, data={}), ev(2, data={}), ev(3, data={"request_id": "x"})])
        await p.receiver().send([ev(1, data={}), ev(4, data={"request_id": "x"})])
        await p.exporter().wait_for(4)
        await settle_queue(p)
    assert [e["id"] for e in p.exporter().events] == ["e1", "e2", "e3", "e1"]


async def test_a_failing_key_follows_on_error(collector_run_pipeline, collector_fake_clock):
    async with collector_run_pipeline(config('{key: "this.data.n + 1"}'), clock=collector_fake_clock) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send([ev(1, data={"n": 1}), ev(2, data={"n": "x"})])
        assert [r.index for r in exc.value.records] == [1]
    async with collector_run_pipeline(
        config('{key: "this.data.n + 1", on_error: drop}'), clock=collector_fake_clock
    ) as p:
        await p.receiver().send([ev(1, data={"n": 1}), ev(2, data={"n": "x"}), ev(3, data={"n": 1})])
        await p.exporter().wait_for(1)
        await settle_queue(p)
        assert dropped(p, "error") == 1 and dropped(p, "duplicate") == 1
    assert [e["id"] for e in p.exporter().events] == ["e1"]


async def test_a_full_key_store_evicts_the_keys_closest_to_expiry(collector_run_pipeline, collector_storage):
    clock = FakeClock()
    async with collector_run_pipeline(config("{max_keys: 3, window: 1h}"), clock=clock) as p:
        for i in range(1, 4):
            await p.receiver().send([ev(i)])
            clock.advance(60)
        await p.receiver().send([ev(4), ev(5)])  # evicts e1 and e2, the oldest keys
        await p.receiver().send([ev(3), ev(1)])  # e3 is still known; e1 was forgotten (recording it evicts e3)
        await p.exporter().wait_for(6)
        await settle_queue(p)
        evicted = p.service.telemetry.metrics.registry.get_sample_value(
            "collector_state_evicted_keys_total", {"component": "dedupe"}
        )
        assert evicted == 3
        assert p.service.processors[("test", "dedupe")].health()["evicted_keys"] == 3
    assert [e["id"] for e in p.exporter().events] == ["e1", "e2", "e3", "e4", "e5", "e1"]


async def test_dedupe_before_a_window_check_in_two_pipelines(collector_run_pipeline, collector_fake_clock):
    """Each pipeline has its own dedupe state (storage is per processor and pipeline)."""
    yaml_text = """
receivers: {scripted: {}}
processors: {dedupe: {}}
exporters: {memory/a: {batch: {period: 0.01}}, memory/b: {batch: {period: 0.01}}}
service:
  pipelines:
    a: {receivers: [scripted], processors: [dedupe], exporters: [memory/a]}
    b: {receivers: [scripted], processors: [dedupe], exporters: [memory/b]}
"""
    async with collector_run_pipeline(yaml_text, clock=collector_fake_clock) as p:
        await p.receiver().send([ev(1), ev(1)])
        await p.receiver().send([ev(1)])
        a = await p.exporter("memory/a").wait_for(1)
        b = await p.exporter("memory/b").wait_for(1)
        # Counted while the sends ran, before they returned: nothing to wait for.
        assert dropped(p, "duplicate") == 4
    assert [e["id"] for e in a] == ["e1"] and [e["id"] for e in b] == ["e1"]


def test_config_rejects_a_bad_window_and_a_bad_key():
    from collector.builtin.processors.dedupe import DedupeConfig

    assert DedupeConfig().window == 86400.0
    assert DedupeConfig(window="90m").window == 5400.0
    with pytest.raises(ValueError, match="greater than 0"):
        DedupeConfig(window="0s")
    with pytest.raises(ValueError):
        DedupeConfig(window="soon")
    with pytest.raises(Exception, match="unknown name"):
        DedupeConfig(key="nope.x").check_with_functions(None)


async def test_a_call_that_never_settles_does_not_block_its_keys_forever(
    collector_run_pipeline, collector_fake_clock, monkeypatch
):
    from collector.builtin.processors import dedupe as module
    from collector.components import Batch

    monkeypatch.setattr(module, "PENDING_WAIT", 0.05)
    async with collector_run_pipeline(config(), clock=collector_fake_clock) as p:
        dedupe = p.service.processors[("test", "dedupe")]
        await dedupe.process_batch(Batch.of([ev(1)]), {})  # its outcome hook is never called
        await p.receiver().send([ev(1)])
        events = await p.exporter().wait_for(1)
    assert [e["id"] for e in events] == ["e1"]
