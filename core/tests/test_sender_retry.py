"""The sender's retry policy on its own: classification, backoff, split, dead letters, max_age."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from collector.clock import FakeClock
from collector.components import RetrySettings
from collector.errors import AuthError, PermanentError, RetryableError
from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.queue import QueueItem
from collector.runtime.sender.batching import Pending, Tracker
from collector.runtime.sender.retry import Delivery, SenderStats, classify
from collector.telemetry import Metrics

Answer = Callable[[list[dict[str, Any]]], BaseException | None]


class Harness:
    """A Delivery with a scripted exporter, a real dead-letter store and recorded sleeps."""

    def __init__(self, tmp_path: Path, answer: Answer, *, max_age: float = 3600.0, store: Any = None) -> None:
        self.clock = FakeClock()
        self.metrics = Metrics()
        self.stats = SenderStats()
        self.store = store or DeadLetterStore(tmp_path / "dl.sqlite")
        self.calls: list[list[str]] = []
        self.delivered: list[str] = []
        self.finished: list[str] = []
        self.sleeps: list[float] = []
        self.stopping = False
        self.answer = answer
        self.delivery = Delivery(
            "om",
            self._export,
            retry=RetrySettings(initial_interval=1.0, max_interval=60.0, auth_interval=30.0),
            timeout=5.0,
            max_age=max_age,
            deadletters=self.store,
            metrics=self.metrics,
            stats=self.stats,
            clock=self.clock,
            run_io=self._run_io,
            finish=self._finish,
            sleep=self._sleep,
            stopping=lambda: self.stopping,
            rng=random.Random(3),
        )

    async def _export(self, events: list[dict[str, Any]]) -> None:
        self.calls.append([e["id"] for e in events])
        failure = self.answer(events)
        if failure is not None:
            raise failure
        self.delivered.extend(e["id"] for e in events)

    async def _run_io(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    async def _finish(self, pairs: list[Pending]) -> None:
        self.finished.extend(p.event["id"] for p in pairs)

    async def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def batch(self, n: int, *, enqueued_at: float | None = None) -> list[Pending]:
        events = [{"id": f"e{i}"} for i in range(n)]
        at = self.clock.time() if enqueued_at is None else enqueued_at
        tracker = Tracker(QueueItem(1, events, at, 10 * n), n)
        return [Pending(e, 10, tracker) for e in events]

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"exporter": "om", **labels}) or 0.0


def script(*answers: BaseException | None) -> Answer:
    left = list(answers)
    return lambda events: left.pop(0) if left else None


@pytest.mark.parametrize(
    "exc,klass,retry_after",
    [
        (RetryableError("503", retry_after=2.0), "retryable", 2.0),
        (TimeoutError(), "timeout", None),
        (ConnectionRefusedError("refused"), "network", None),
        (ValueError("a bug"), "error", None),
    ],
)
def test_failures_are_classified(exc: BaseException, klass: str, retry_after: float | None):
    failure = classify(exc)
    assert (failure.klass, failure.retry_after) == (klass, retry_after)


def test_a_retryable_error_keeps_its_own_class():
    exc = RetryableError("HTTP 503")
    exc.klass = "http_5xx"  # type: ignore[attr-defined]
    assert classify(exc).klass == "http_5xx"


async def test_retries_back_off_within_the_growing_ceiling_and_honour_retry_after(tmp_path: Path):
    h = Harness(tmp_path, script(RetryableError("a"), OSError("b"), TimeoutError(), RetryableError("c", 7.5)))
    await h.delivery.deliver(h.batch(3))
    assert h.delivered == ["e0", "e1", "e2"] and h.finished == ["e0", "e1", "e2"]
    assert len(h.sleeps) == 4
    assert all(0 <= s <= ceiling for s, ceiling in zip(h.sleeps[:3], [1.0, 2.0, 4.0], strict=True))
    assert h.sleeps[3] >= 7.5  # never sooner than the far side asked
    assert h.metric("collector_exporter_retries_total", **{"class": "retryable"}) == 2
    assert h.metric("collector_exporter_retries_total", **{"class": "network"}) == 1
    assert h.metric("collector_exporter_retries_total", **{"class": "timeout"}) == 1
    assert h.stats.consecutive_failures == 0  # reset by the delivery


@pytest.mark.parametrize("n,bad", [(13, {2, 7, 11}), (8, {0}), (5, {0, 1, 2, 3, 4}), (1, {0})])
async def test_a_rejected_batch_is_split_until_exactly_the_bad_events_are_isolated(
    tmp_path: Path, n: int, bad: set[int]
):
    bad_ids = {f"e{i}" for i in bad}

    def reject(events: list[dict[str, Any]]) -> BaseException | None:
        hit = sorted(e["id"] for e in events if e["id"] in bad_ids)
        return PermanentError("refused", status=400, body=f"bad: {hit}") if hit else None

    h = Harness(tmp_path, reject)
    await h.delivery.deliver(h.batch(n))
    letters = h.store.list()
    assert sorted(d.event["id"] for d in letters) == sorted(bad_ids)
    assert all(d.reason == "rejected" and d.status == 400 and d.body and "bad" in d.body for d in letters)
    assert sorted(h.delivered) == sorted({f"e{i}" for i in range(n)} - bad_ids)
    assert sorted(h.finished) == sorted(f"e{i}" for i in range(n))  # each event finished exactly once
    assert h.sleeps == []  # a refusal is not retried with backoff
    assert h.delivery.dead_letter_count == len(bad)
    assert h.metric("collector_exporter_dead_lettered_events_total", reason="rejected") == len(bad)


async def test_auth_errors_pause_wait_the_auth_interval_and_resume(tmp_path: Path):
    h = Harness(tmp_path, script(AuthError("forbidden", status=403), AuthError("forbidden", status=403)))
    paused: list[bool] = []
    original = h._sleep

    async def watch(seconds: float) -> None:
        paused.append(h.stats.paused)
        await original(seconds)

    h.delivery._sleep = watch  # type: ignore[method-assign]
    await h.delivery.deliver(h.batch(2))
    assert paused == [True, True] and h.sleeps == [30.0, 30.0]
    assert not h.stats.paused and h.stats.paused_reason is None
    assert h.delivered == ["e0", "e1"] and h.store.count() == 0


async def test_events_older_than_max_age_by_the_clock_are_dead_lettered_not_sent(tmp_path: Path):
    h = Harness(tmp_path, script(RetryableError("down"), RetryableError("down")), max_age=60.0)
    batch = h.batch(2)
    h.clock.advance(59.0)
    h.delivery._sleep = lambda s: _advance(h.clock, 2.0)  # type: ignore[method-assign,assignment]
    await h.delivery.deliver(batch)
    assert h.calls == [["e0", "e1"]]  # tried once while young; expired before the retry
    assert [d.reason for d in h.store.list()] == ["max_age", "max_age"]
    assert h.finished == ["e0", "e1"] and h.delivered == []


async def _advance(clock: FakeClock, seconds: float) -> None:
    clock.advance(seconds)


class FlakyStore:
    """A dead-letter store whose disk is full for the first ``failures`` writes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.rows: list[dict[str, Any]] = []

    def add(self, events: list[dict[str, Any]], reason: str, **kw: Any) -> int:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        self.rows.extend(events)
        return len(events)


async def test_a_failing_dead_letter_store_is_retried_with_backoff_until_it_works(tmp_path: Path):
    store = FlakyStore(failures=3)
    h = Harness(tmp_path, script(PermanentError("no", status=422)), store=store)
    await h.delivery.deliver(h.batch(1))
    assert [e["id"] for e in store.rows] == ["e0"] and h.finished == ["e0"]
    assert len(h.sleeps) == 3 and all(0 <= s <= 5.0 for s in h.sleeps)


async def test_a_failed_request_is_not_retried_while_stopping(tmp_path: Path):
    h = Harness(tmp_path, script(RetryableError("down")))
    h.delivery._sleep = lambda s: _stop(h)  # type: ignore[method-assign,assignment]
    await h.delivery.deliver(h.batch(2))
    assert h.calls == [["e0", "e1"]]  # left queued for the next start, not retried
    assert h.finished == [] and h.delivered == []


async def test_dead_letters_that_cannot_be_stored_while_stopping_stay_queued(tmp_path: Path):
    store = FlakyStore(failures=5)
    h = Harness(tmp_path, script(PermanentError("no", status=422)), store=store)
    h.delivery._sleep = lambda s: _stop(h)  # type: ignore[method-assign,assignment]
    await h.delivery.deliver(h.batch(1))
    assert store.rows == [] and h.finished == []  # not finished: the queue keeps them
    assert h.metric("collector_exporter_dead_lettered_events_total", reason="rejected") == 0


async def _stop(h: Harness) -> None:
    h.stopping = True
