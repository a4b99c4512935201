"""The sender's status classes: retry, split and dead-letter, auth pause, max_age, timeout."""

from __future__ import annotations

import asyncio

import pytest

from collector.clock import FakeClock
from collector.errors import AuthError, PermanentError, RetryableError

FAST = "retry: {initial_interval: 0.01, max_interval: 0.05, auth_interval: 0.05}"


def ev(i: int) -> dict:
    return {"specversion": "1.0", "id": f"e{i}", "source": "test", "type": "t", "subject": "s"}


def config(extra: str = "") -> str:
    extra = ", " + extra if extra else ""
    return (
        "receivers: {scripted: {}}\n"
        f"exporters: {{memory: {{batch: {{period: 0.01, max_events: 8}}, timeout: 0.3, {FAST}{extra}}}}}\n"
    )


def metric(p, name: str, **labels) -> float:
    value = p.service.telemetry.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def test_retryable_errors_are_retried_until_delivered(collector_run_pipeline):
    async with collector_run_pipeline(config()) as p:
        exp = p.exporter()
        exp.fail_with = [RetryableError("503"), ConnectionError("refused"), RetryableError("429", retry_after=0.1)]
        await p.receiver().send([ev(1), ev(2)])
        events = await exp.wait_for(2)
        assert [e["id"] for e in events] == ["e1", "e2"]
        assert metric(p, "collector_exporter_retries_total", exporter="memory", **{"class": "retryable"}) == 2
        assert metric(p, "collector_exporter_retries_total", exporter="memory", **{"class": "network"}) == 1


async def test_retry_after_is_honoured(collector_run_pipeline):
    async with collector_run_pipeline(config()) as p:
        exp = p.exporter()
        exp.fail_with = [RetryableError("429", retry_after=0.5)]
        t0 = asyncio.get_running_loop().time()
        await p.receiver().send([ev(1)])
        await exp.wait_for(1)
        assert asyncio.get_running_loop().time() - t0 >= 0.5


async def test_rejected_batch_is_split_until_bad_events_are_isolated(collector_run_pipeline):
    bad = {"e3", "e6"}

    def reject_bad(events):
        hit = [e["id"] for e in events if e["id"] in bad]
        return PermanentError("bad", status=400, body=f'{{"detail":"bad {hit}"}}') if hit else None

    async with collector_run_pipeline(config()) as p:
        exp = p.exporter()
        exp.fail_with = [reject_bad] * 50
        await p.receiver().send([ev(i) for i in range(8)])
        await exp.wait_for(6)
        await until(lambda: p.service.exporters["memory"].deadletters.count() == 2)
        delivered = sorted(e["id"] for e in exp.events)
        assert delivered == ["e0", "e1", "e2", "e4", "e5", "e7"]
        letters = p.service.exporters["memory"].deadletters.list()
        assert sorted(d.event["id"] for d in letters) == ["e3", "e6"]
        assert all(d.reason == "rejected" and d.status == 400 and "bad" in (d.body or "") for d in letters)
        await until(lambda: p.service.exporters["memory"].queue.stats().items == 0)
        assert metric(p, "collector_exporter_dead_lettered_events_total", exporter="memory", reason="rejected") == 2


async def test_auth_error_pauses_keeps_data_and_resumes(collector_run_pipeline):
    async with collector_run_pipeline(config()) as p:
        runner = p.service.exporters["memory"]
        exp = p.exporter()
        exp.fail_with = [AuthError("401 Unauthorized", status=401)] * 5
        await p.receiver().send([ev(1)])
        await until(lambda: runner.stats.paused)
        health = p.service.health()
        assert health["ready"] is False
        assert health["components"]["exporters"]["memory"]["paused"] is True
        assert "401" in health["components"]["exporters"]["memory"]["paused_reason"]
        await exp.wait_for(1)
        await until(lambda: not runner.stats.paused)
        assert p.service.health()["ready"] is True
        assert runner.deadletters.count() == 0


async def test_timeout_is_retried(collector_run_pipeline):
    async with collector_run_pipeline(config()) as p:
        exp = p.exporter()
        original = exp.export
        calls = {"n": 0}

        async def stall_once(events):
            calls["n"] += 1
            if calls["n"] == 1:
                await asyncio.sleep(5)
            await original(events)

        exp.export = stall_once  # type: ignore[method-assign]
        await p.receiver().send([ev(1)])
        await exp.wait_for(1, timeout=5)
        assert metric(p, "collector_exporter_retries_total", exporter="memory", **{"class": "timeout"}) == 1


async def test_events_older_than_max_age_are_dead_lettered_by_the_clock(collector_run_pipeline):
    # The queue stamps commits with the service's clock and the sender ages them
    # by it: only the test moves it, so nothing here waits an hour.
    clock = FakeClock()
    retries = {"exporter": "memory", "class": "retryable"}
    async with collector_run_pipeline(config("queue: {kind: memory, max_age: 3600}"), clock=clock) as p:
        runner = p.service.exporters["memory"]
        p.exporter().fail_with = [RetryableError("down")] * 1000
        await p.receiver().send([ev(1), ev(2)])
        await until(lambda: metric(p, "collector_exporter_retries_total", **retries) >= 1)
        # Backoff sleeps are on the clock too: advancing it wakes the retry, still young.
        seen = metric(p, "collector_exporter_retries_total", **retries)
        clock.advance(3500)
        await until(lambda: metric(p, "collector_exporter_retries_total", **retries) > seen)
        assert runner.deadletters.count() == 0
        assert runner.queue.stats().events == 2
        clock.advance(200)
        await until(lambda: runner.deadletters.count() == 2)
        assert {d.reason for d in runner.deadletters.list()} == {"max_age"}
        await until(lambda: runner.queue.stats().items == 0)
        assert metric(p, "collector_exporter_dead_lettered_events_total", exporter="memory", reason="max_age") == 2
        assert metric(p, "collector_queue_events", exporter="memory") == 0


@pytest.mark.parametrize("n", [1, 250])
async def test_counters_reconcile(collector_run_pipeline, n):
    async with collector_run_pipeline(config()) as p:

        def reject_e0(evs):
            return PermanentError("no", status=422) if any(e["id"] == "e0" for e in evs) else None

        p.exporter().fail_with = [RetryableError("x")] + [reject_e0] * 100
        await p.receiver().send([ev(i) for i in range(n)])
        runner = p.service.exporters["memory"]
        await until(lambda: runner.queue.stats().items == 0)
        enq = metric(p, "collector_exporter_enqueued_events_total", exporter="memory")
        dlv = metric(p, "collector_exporter_delivered_events_total", exporter="memory")
        dl = metric(p, "collector_exporter_dead_lettered_events_total", exporter="memory", reason="rejected")
        assert enq == n and dlv == n - 1 and dl == 1
