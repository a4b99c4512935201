"""The aggregate processor: exact windows, deterministic ids, closing on the clock, restarts, late data."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from collector.builtin.processors.aggregate import NS_SEEN, NS_WINDOWS, AggregateConfig
from collector.clock import FakeClock
from collector.errors import BackpressureError, PermanentError

T0 = datetime(2023, 11, 14, 22, 13, 0, tzinfo=UTC).timestamp()  # a window boundary for 60s windows
DOC = Path(__file__).resolve().parents[2] / "docs" / "processors" / "aggregate.md"

BASE: dict[str, Any] = {
    "window": "60s",
    "allowed_lateness": "5s",
    "group_by": ["data.model"],
    "aggregations": [
        {"field": "data.tokens", "op": "sum", "as": "tokens"},
        {"op": "count", "as": "requests"},
    ],
}


def config(**overrides: Any) -> str:
    agg = {**BASE, **overrides}
    return yaml.safe_dump(
        {
            "receivers": {"scripted": {}},
            "processors": {"aggregate": agg},
            "exporters": {"memory": {"batch": {"period": 0.01}}},
        }
    )


def at(seconds: float) -> str:
    """An RFC 3339 time ``seconds`` after T0."""
    return datetime.fromtimestamp(T0 + seconds, UTC).isoformat().replace("+00:00", "Z")


def ev(i: int | str, t: float, subject: str = "acme", model: str = "gpt", tokens: Any = 10, **extra: Any) -> dict:
    return {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": "api",
        "type": "tokens",
        "subject": subject,
        "time": at(t),
        "data": {"model": model, "tokens": tokens},
        **extra,
    }


def proc(p: Any, pipeline: str = "test") -> Any:
    return p.service.processors[(pipeline, "aggregate")]


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.005)


async def advance(p: Any, clock: FakeClock, seconds: float, pipeline: str = "test") -> None:
    """Move the clock once the closer waits, and wait for the pass that this wakes up."""
    a = proc(p, pipeline)
    await until(lambda: a.idle)
    passes = a.passes
    clock.advance(seconds)
    await until(lambda: a.passes > passes and a.idle)


async def delivered(p: Any) -> list[dict]:
    """Everything committed so far, once the sender has passed it all to the memory exporter."""
    enqueued = p.service.telemetry.metrics.enqueued.labels(exporter="memory")
    await until(lambda: len(p.exporter().events) >= enqueued._value.get())
    return p.exporter().events


def dropped(p: Any, reason: str) -> float:
    return p.service.telemetry.metrics.dropped.labels(processor="aggregate", reason=reason)._value.get()


def by_group(events: list[dict]) -> dict[tuple, dict]:
    return {(e["subject"], e["data"].get("model"), e["time"]): e for e in events}


MIXED = [
    ev(1, 1, tokens=10),
    ev(2, 30, tokens=5),
    ev(3, 59.999, tokens=1),
    ev(4, 2, model="mini", tokens=7),
    ev(5, 3, subject="globex", tokens=100),
    ev(6, 60, tokens=1000),  # the next window
    ev(7, 61, tokens="2.5"),  # numeric strings count
]


async def test_exact_sums_and_counts_per_group_and_window(collector_run_pipeline):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(), clock=clock) as p:
        await p.receiver().send(MIXED)
        await advance(p, clock, 64)  # 22:14:04: the first window is not closed yet (end + 5 s)
        assert await delivered(p) == []
        await advance(p, clock, 2)  # 22:14:06
        await until(lambda: len(p.exporter().events) == 3)
        await advance(p, clock, 60)  # 22:15:06: the second window
        events = await delivered(p)
        assert dropped(p, "aggregated") == 7
    got = {k: e["data"] for k, e in by_group(events).items()}
    w1, w2 = at(0).replace("Z", ".000Z"), at(60).replace("Z", ".000Z")
    w3 = at(120).replace("Z", ".000Z")
    assert got == {
        ("acme", "gpt", w1): {"model": "gpt", "tokens": 16, "requests": 3, "window_start": w1, "window_end": w2},
        ("acme", "mini", w1): {"model": "mini", "tokens": 7, "requests": 1, "window_start": w1, "window_end": w2},
        ("globex", "gpt", w1): {"model": "gpt", "tokens": 100, "requests": 1, "window_start": w1, "window_end": w2},
        ("acme", "gpt", w2): {"model": "gpt", "tokens": 1002.5, "requests": 2, "window_start": w2, "window_end": w3},
    }
    for e in events:
        assert e["specversion"] == "1.0" and e["source"] == "api" and e["type"] == "tokens"
        assert e["time"] == e["data"]["window_start"]


async def test_sums_are_exact_decimals_and_min_max_count_of_a_field(collector_run_pipeline):
    aggs = [
        {"field": "data.tokens", "op": "sum", "as": "total"},
        {"field": "data.tokens", "op": "min", "as": "least"},
        {"field": "data.tokens", "op": "max", "as": "most"},
        {"field": "data.cached", "op": "count", "as": "cached"},
    ]
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(aggregations=aggs, group_by=[]), clock=clock) as p:
        await p.receiver().send([ev(1, 1, tokens=0.1), ev(2, 2, tokens=0.2, data={"tokens": 0.2, "cached": True})])
        await p.receiver().send([ev(3, 3, tokens=-4)])
        await advance(p, clock, 70)
        (event,) = await delivered(p)
    data = event["data"]
    assert (data["total"], data["least"], data["most"], data["cached"]) == (-3.7, -4, 0.2, 1)
    assert "model" not in data


async def test_ids_are_deterministic_and_distinct(collector_run_pipeline, tmp_path):
    runs = []
    for n in range(2):
        clock = FakeClock(T0)
        async with collector_run_pipeline(config(), clock=clock, storage_dir=tmp_path / f"s{n}") as p:
            await p.receiver().send(MIXED)
            await advance(p, clock, 200)
            runs.append(await delivered(p))
    first, second = (sorted(r, key=lambda e: e["id"]) for r in runs)
    assert first == second
    assert len({e["id"] for e in first}) == 4
    for e in first:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", e["id"])


async def test_a_window_closes_only_once_the_clock_passes_end_plus_lateness(collector_run_pipeline):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(allowed_lateness="10s", close_interval="1ms"), clock=clock) as p:
        await p.receiver().send([ev(1, 5)])
        await advance(p, clock, 70)  # exactly end + lateness: still open
        await p.receiver().send([ev(2, 6)])  # still taken into the window
        assert await delivered(p) == []
        await advance(p, clock, 0.001)
        await until(lambda: len(p.exporter().events) == 1)
        (event,) = await delivered(p)
        assert proc(p).health()["windows_emitted"] == 1
    assert event["data"]["requests"] == 2 and event["data"]["tokens"] == 20


async def test_a_restart_in_the_middle_of_a_window_neither_loses_nor_double_counts(collector_run_pipeline, tmp_path):
    first_half, second_half = MIXED[:4], MIXED[4:]
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(), clock=clock, storage_dir=tmp_path / "uninterrupted") as p:
        await p.receiver().send(first_half)
        await advance(p, clock, 30)
        await p.receiver().send(second_half)
        await advance(p, clock, 200)
        expected = await delivered(p)

    clock = FakeClock(T0)
    storage = tmp_path / "restarted"
    async with collector_run_pipeline(config(), clock=clock, storage_dir=storage) as p:
        await p.receiver().send(first_half)
        await advance(p, clock, 30)
        assert await delivered(p) == []
    # down for a while, still inside the windows: nothing was emitted, nothing lost
    async with collector_run_pipeline(config(), clock=clock, storage_dir=storage) as p:
        await p.receiver().send(second_half)
        await advance(p, clock, 200)
        got = await delivered(p)
    assert sorted(got, key=lambda e: e["id"]) == sorted(expected, key=lambda e: e["id"])
    assert len(got) == 4


async def test_windows_that_closed_while_down_are_emitted_at_start(collector_run_pipeline):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(), clock=clock) as p:
        await p.receiver().send([ev(1, 1), ev(2, 2)])
    clock.advance(3600)
    async with collector_run_pipeline(config(), clock=clock) as p:
        await until(lambda: len(p.exporter().events) == 1)
        (event,) = await delivered(p)
    assert event["data"]["requests"] == 2


async def test_a_crash_between_emit_and_delete_emits_the_same_id_again(collector_run_pipeline):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(), clock=clock) as p:
        await p.receiver().send([ev(1, 1), ev(2, 2, model="mini")])
        store = proc(p).store

        def fail_delete(*args: Any) -> int:
            raise OSError("crash before the delete")

        store.delete_many = fail_delete  # the forward commits, the delete never happens
        await advance(p, clock, 70)
        first = await delivered(p)
        assert len(first) == 2 and "crash before the delete" in proc(p).health()["close_error"]
    async with collector_run_pipeline(config(), clock=clock) as p:
        await until(lambda: len(p.exporter().events) == 2)
        again = await delivered(p)
        await advance(p, clock, 60)
        assert len(await delivered(p)) == 2, "deleted after the second emit: not emitted a third time"
    assert sorted(again, key=lambda e: e["id"]) == sorted(first, key=lambda e: e["id"])


async def test_a_failed_forward_is_retried_on_the_next_pass(collector_run_pipeline):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(), clock=clock) as p:
        await p.receiver().send([ev(1, 1)])
        runner = p.service.exporters["memory"]
        original = runner.check_capacity
        calls = {"n": 0}

        def refuse_once() -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise BackpressureError("queue full", retry_after=1.0)
            original()

        runner.check_capacity = refuse_once  # type: ignore[method-assign]
        await advance(p, clock, 70)
        assert await delivered(p) == [] and proc(p).health()["close_error"].startswith("BackpressureError")
        await advance(p, clock, 1)
        (event,) = await delivered(p)
        assert "close_error" not in proc(p).health()
    assert event["data"]["requests"] == 1


async def test_a_retried_batch_is_counted_once(collector_run_pipeline):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(), clock=clock) as p:
        batch = [ev(1, 1), ev(2, 2)]
        await p.receiver().send(batch)
        await p.receiver().send(batch)  # the client never saw the first answer
        await p.receiver().send([ev(3, 3), ev(3, 3)])  # the same event twice in one batch
        await advance(p, clock, 70)
        (event,) = await delivered(p)
        assert dropped(p, "duplicate") == 3 and dropped(p, "aggregated") == 3
    assert event["data"]["requests"] == 3


async def test_without_dedupe_window_every_event_counts(collector_run_pipeline):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(dedupe_window=0), clock=clock) as p:
        await p.receiver().send([ev(1, 1), ev(1, 1)])
        await advance(p, clock, 70)
        (event,) = await delivered(p)
        assert proc(p).store.count(NS_SEEN) == 0
    assert event["data"]["requests"] == 2


async def test_a_call_that_fails_elsewhere_absorbs_nothing(collector_run_pipeline):
    yaml_text = f"""
receivers: {{scripted: {{}}}}
processors:
  aggregate: {orjson.dumps({**BASE, "dedupe_window": 0}).decode()}
exporters: {{memory: {{batch: {{period: 0.01}}}}, memory/raw: {{batch: {{period: 0.01}}}}}}
service:
  pipelines:
    test: {{receivers: [scripted], processors: [aggregate], exporters: [memory]}}
    raw: {{receivers: [scripted], exporters: [memory/raw]}}
"""
    clock = FakeClock(T0)
    async with collector_run_pipeline(yaml_text, clock=clock) as p:
        raw = p.service.exporters["memory/raw"]
        original = raw.check_capacity
        calls = {"n": 0}

        def refuse_once() -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                raise BackpressureError("queue full", retry_after=1.0)
            original()

        raw.check_capacity = refuse_once  # type: ignore[method-assign]
        with pytest.raises(BackpressureError):
            await p.receiver().send([ev(1, 1), ev(2, 2)])
        assert proc(p).store.count(NS_WINDOWS) == 0
        await p.receiver().send([ev(1, 1), ev(2, 2)])  # the client's retry
        await advance(p, clock, 70)
        (event,) = await delivered(p)
    assert event["data"]["requests"] == 2


async def test_late_events_become_a_correction_with_its_own_id(collector_run_pipeline):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(), clock=clock) as p:
        await p.receiver().send([ev(1, 1, tokens=10)])
        await advance(p, clock, 70)  # 22:14:10: the 22:13 window went out
        (original,) = await delivered(p)
        await p.receiver().send([ev(2, 2, tokens=5), ev(3, 3, tokens=1)])  # late for 22:13
        await advance(p, clock, 60)  # 22:15:10: the arrival window 22:14 closed
        events = await delivered(p)
        assert dropped(p, "late") == 0
    assert len(events) == 2
    correction = events[1]
    assert correction["id"] != original["id"]
    assert correction["time"] == original["time"]
    assert {k: correction["data"][k] for k in ("window_start", "window_end", "model")} == {
        k: original["data"][k] for k in ("window_start", "window_end", "model")
    }
    assert (original["data"]["tokens"], correction["data"]["tokens"]) == (10, 6)
    assert correction["data"]["requests"] == 2


async def test_a_backfill_of_an_old_window_is_late_too(collector_run_pipeline):
    clock = FakeClock(T0 + 3600)
    async with collector_run_pipeline(config(), clock=clock) as p:
        await p.receiver().send([ev(1, 1), ev(2, 2)])
        await advance(p, clock, 70)
        (event,) = await delivered(p)
    assert event["time"] == at(0).replace("Z", ".000Z") and event["data"]["requests"] == 2


async def test_late_events_can_be_dropped_and_counted(collector_run_pipeline):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(late="drop"), clock=clock) as p:
        await p.receiver().send([ev(1, 1)])
        await advance(p, clock, 70)
        await p.receiver().send([ev(2, 2), ev(3, 65)])  # e2 is late, e3 is in the open 22:14 window
        await advance(p, clock, 60)
        events = await delivered(p)
        assert dropped(p, "late") == 1
    assert [e["data"]["requests"] for e in events] == [1, 1]
    assert events[1]["time"] == at(60).replace("Z", ".000Z")


async def test_an_event_for_a_closing_window_is_never_added_to_it(collector_run_pipeline):
    """Between being claimed and deleted a window takes no more input, whatever the clock says."""
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(), clock=clock) as p:
        await p.receiver().send([ev(1, 1)])
        store = proc(p).store
        original = store.delete_many
        store.delete_many = lambda *a: (_ for _ in ()).throw(OSError("not yet"))
        await advance(p, clock, 70)  # claimed and emitted, not deleted
        clock.advance(-30)  # the wall clock steps back: by the clock the window would be open again
        await p.receiver().send([ev(2, 2)])
        store.delete_many = original
        clock.advance(30)
        await advance(p, clock, 1)
        await advance(p, clock, 60)
        events = await delivered(p)
    assert len(events) == 3  # the window, the same window again (its delete failed), the correction
    assert events[0] == events[1]
    assert events[2]["id"] != events[0]["id"] and events[2]["data"]["requests"] == 1


async def test_a_clock_that_steps_back_never_reopens_an_emitted_window(collector_run_pipeline):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(), clock=clock) as p:
        await p.receiver().send([ev(1, 1)])
        await advance(p, clock, 70)  # emitted and deleted
        (original,) = await delivered(p)
        clock.advance(-30)  # 22:13:40: by this clock the 22:13 window would still be open
        await p.receiver().send([ev(2, 2)])
        await advance(p, clock, 120)
        events = await delivered(p)
    assert len(events) == 2 and events[1]["id"] != original["id"]
    assert events[1]["time"] == original["time"] and events[1]["data"]["requests"] == 1


async def test_bad_records_follow_on_error(collector_run_pipeline):
    clock = FakeClock(T0)
    bad = [ev(1, 1), {**ev(2, 2), "time": None}, ev(3, 3, tokens="lots"), {**ev(4, 4), "subject": ""}, ev(5, 5)]
    del bad[4]["data"]["tokens"]
    async with collector_run_pipeline(config(), clock=clock) as p:
        with pytest.raises(PermanentError) as exc:
            await p.receiver().send(bad)
        assert [r.index for r in exc.value.records] == [1, 2, 3, 4]
        assert "time" in exc.value.records[0].message and "tokens" in exc.value.records[1].message
        assert proc(p).store.count(NS_WINDOWS) == 0
    async with collector_run_pipeline(config(on_error="drop"), clock=clock) as p:
        await p.receiver().send(bad)
        await advance(p, clock, 70)
        (event,) = await delivered(p)
        assert dropped(p, "error") == 4
    assert event["data"]["requests"] == 1


async def test_open_windows_filling_the_store_refuse_with_backpressure(collector_run_pipeline):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(max_keys=3, dedupe_window=0), clock=clock) as p:  # 2 windows + bookkeeping
        await p.receiver().send([ev(1, 1, model="a"), ev(2, 1, model="b")])
        with pytest.raises(BackpressureError):
            await p.receiver().send([ev(3, 1, model="c")])
        await advance(p, clock, 70)  # the windows close and make room
        await p.receiver().send([ev(3, 61, model="c")])
        await advance(p, clock, 60)
        events = await delivered(p)
    assert sorted(e["data"]["model"] for e in events) == ["a", "b", "c"]


async def test_remembered_ids_are_evicted_before_windows(collector_run_pipeline):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(max_keys=4), clock=clock) as p:
        await p.receiver().send([ev(1, 1), ev(2, 2)])  # 1 window + 2 ids (+ 1 bookkeeping entry)
        await p.receiver().send([ev(3, 3)])  # 1 window + 3 ids: the oldest id goes
        evicted = p.service.telemetry.metrics.registry.get_sample_value(
            "collector_state_evicted_keys_total", {"component": "aggregate"}
        )
        assert evicted == 1 and proc(p).store.count(NS_WINDOWS) == 1
        await advance(p, clock, 70)
        (event,) = await delivered(p)
    assert event["data"]["requests"] == 3


async def test_group_by_an_extension_attribute_and_nested_data(collector_run_pipeline):
    clock = FakeClock(T0)
    cfg = config(group_by=["region", "data.labels.tier"], aggregations=[{"op": "count", "as": "n"}])
    async with collector_run_pipeline(cfg, clock=clock) as p:
        await p.receiver().send(
            [
                ev(1, 1, region="eu", data={"labels": {"tier": "pro"}}),
                ev(2, 2, region="eu", data={"labels": {"tier": "pro"}}),
                ev(3, 3, data={"labels": {"tier": "pro"}}),
            ]
        )
        await advance(p, clock, 70)
        events = await delivered(p)
    got = sorted((e.get("region") or "-", e["data"]["labels"]["tier"], e["data"]["n"]) for e in events)
    assert got == [("-", "pro", 1), ("eu", "pro", 2)]


async def test_open_windows_stay_in_the_store_across_shutdown(collector_run_pipeline, collector_storage):
    clock = FakeClock(T0)
    async with collector_run_pipeline(config(), clock=clock) as p:
        await p.receiver().send([ev(1, 1)])
    from collector.state import StateStore

    store = StateStore(collector_storage / "processors" / "aggregate" / "test" / "aggregate.sqlite")
    (entry,) = store.items(NS_WINDOWS)
    assert entry.value["acc"] == {"tokens": "10", "requests": 1} and entry.value["closing"] is False
    store.close()


def test_config_is_checked():
    assert AggregateConfig(aggregations=[{"op": "count", "as": "n"}]).window == 60.0
    cases = {
        "needs a field": {"aggregations": [{"op": "sum", "as": "x"}]},
        "unique": {"aggregations": [{"op": "count", "as": "x"}, {"op": "count", "as": "x"}]},
        "whole number of milliseconds": {"window": 0.0005, "aggregations": [{"op": "count", "as": "n"}]},
        "cannot be grouped on": {"group_by": ["subject"], "aggregations": [{"op": "count", "as": "n"}]},
        "collides": {"group_by": ["data.n"], "aggregations": [{"op": "count", "as": "n"}]},
        "extension attribute": {"group_by": ["Region"], "aggregations": [{"op": "count", "as": "n"}]},
        "may not be window_start": {"aggregations": [{"op": "count", "as": "window_start"}]},
        "greater than 0": {"window": "0s", "aggregations": [{"op": "count", "as": "n"}]},
        "at least 1": {"aggregations": []},
    }
    for message, body in cases.items():
        with pytest.raises(ValueError, match=message):
            AggregateConfig(**body)


async def test_the_documented_example(collector_run_pipeline):
    text = DOC.read_text(encoding="utf-8")
    when = re.search(r"<!-- aggregate-example-clock: (\S+) -->", text).group(1)
    rest = text[text.index("<!-- aggregate-example-clock") :]
    blocks = re.findall(r"^```(yaml|json)\n(.*?)^```$", rest, re.MULTILINE | re.DOTALL)
    assert [b[0] for b in blocks] == ["yaml", "json", "json"]
    clock = FakeClock(datetime.fromisoformat(when).timestamp())
    async with collector_run_pipeline(blocks[0][1], clock=clock) as p:
        await p.receiver().send(orjson.loads(blocks[1][1]))
        await advance(p, clock, 60, pipeline="usage")
        await advance(p, clock, 60, pipeline="usage")
        expected = orjson.loads(blocks[2][1])
        await p.exporter().wait_for(len(expected))
    assert p.exporter().events == expected


async def test_after_dedupe_a_failed_absorb_records_no_dedupe_keys(collector_run_pipeline):
    """Outcome hooks run latest processor first; when aggregate cannot absorb, dedupe is told the call failed."""
    yaml_text = f"""
receivers: {{scripted: {{}}}}
processors:
  dedupe: {{}}
  aggregate: {orjson.dumps(BASE).decode()}
exporters: {{memory: {{batch: {{period: 0.01}}}}}}
"""
    clock = FakeClock(T0)
    async with collector_run_pipeline(yaml_text, clock=clock) as p:
        a = proc(p)
        original = a._absorb_sync
        calls = {"n": 0}

        def full_once(*args: Any) -> Any:
            calls["n"] += 1
            if calls["n"] == 1:
                raise BackpressureError("state store full", retry_after=1.0)
            return original(*args)

        a._absorb_sync = full_once
        with pytest.raises(BackpressureError):
            await p.receiver().send([ev(1, 1), ev(2, 2)])
        m = p.service.telemetry.metrics
        assert m.refused.labels(receiver="scripted", reason="backpressure")._value.get() == 2
        await p.receiver().send([ev(1, 1), ev(2, 2), ev(1, 1)])  # the retry is not taken for a duplicate
        await advance(p, clock, 70)
        (event,) = await delivered(p)
        assert m.dropped.labels(processor="dedupe", reason="duplicate")._value.get() == 1
    assert event["data"]["requests"] == 2


async def test_windows_forwarded_into_a_dedupe_record_their_keys(collector_run_pipeline):
    """forward() settles the outcome hooks of the processors after the aggregate, like a receiver's call."""
    yaml_text = f"""
receivers: {{scripted: {{}}}}
processors:
  aggregate: {orjson.dumps(BASE).decode()}
  dedupe: {{}}
exporters: {{memory: {{batch: {{period: 0.01}}}}}}
"""
    clock = FakeClock(T0)
    async with collector_run_pipeline(yaml_text, clock=clock) as p:
        await p.receiver().send([ev(1, 1)])
        store = proc(p).store
        original = store.delete_many
        store.delete_many = lambda *a: (_ for _ in ()).throw(OSError("crash before the delete"))
        await advance(p, clock, 70)
        (event,) = await delivered(p)
        store.delete_many = original
        await advance(p, clock, 1)  # emitted again with the same id: dedupe drops it this time
        assert await delivered(p) == [event]
        assert p.service.telemetry.metrics.dropped.labels(processor="dedupe", reason="duplicate")._value.get() == 1
        assert store.count(NS_WINDOWS) == 0
