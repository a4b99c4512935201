"""The sender's batching: requests cut by count, bytes and period (period by the Clock)."""

from __future__ import annotations

import itertools

import orjson

from collector.clock import FakeClock
from collector.components import BatchSettings
from collector.runtime.queue import QueueItem
from collector.runtime.sender.batching import IDLE_POLL_S, Batcher

_ids = itertools.count(1)


def item(n: int, *, pad: int = 0) -> QueueItem:
    events = [{"id": f"e{next(_ids)}", "pad": "x" * pad} for _ in range(n)]
    return QueueItem(next(_ids), events, 0.0, sum(len(orjson.dumps(e)) for e in events))


def batcher(clock: FakeClock | None = None, **settings: float) -> Batcher:
    return Batcher(BatchSettings(**settings), clock or FakeClock())


def test_requests_are_cut_at_max_events_across_items_and_keep_their_items():
    b = batcher(max_events=8, period=1.0)
    first, second = item(5), item(5)
    t1, t2 = b.add(first), b.add(second)
    assert b.full() and b.due()
    request = b.take()
    assert [p.event["id"] for p in request] == [e["id"] for e in first.events + second.events[:3]]
    assert {id(p.tracker) for p in request[:5]} == {id(t1)} and {id(p.tracker) for p in request[5:]} == {id(t2)}
    assert len(b) == 2 and not b.full()


def test_requests_are_cut_at_max_bytes_and_an_oversized_event_goes_alone():
    b = batcher(max_events=100, max_bytes=1000, period=1.0)
    small = item(3, pad=100)  # about 120 bytes each
    b.add(small)
    b.add(item(1, pad=5000))  # larger than a whole request on its own
    b.add(item(2, pad=100))
    assert b.full()
    assert len(b.take()) == 3  # the small ones; the big one would overflow them
    big = b.take()
    assert len(big) == 1 and len(big[0].event["pad"]) == 5000
    assert len(b.take()) == 2
    assert len(b) == 0 and b.bytes == 0


def test_an_item_larger_than_a_request_is_measured_event_by_event():
    b = batcher(max_events=100, max_bytes=1000)
    b.add(item(4, pad=400))  # 4 x ~420 bytes: over the budget as a whole
    sizes = [p.size for p in b.take()]
    assert len(sizes) == 2 and all(400 < s < 450 for s in sizes)


def test_a_partial_request_waits_for_the_period_by_the_clock():
    clock = FakeClock()
    b = batcher(clock, max_events=100, period=5.0)
    assert not b.due() and b.wait_s() == IDLE_POLL_S  # nothing buffered: idle polling
    b.add(item(3))
    assert not b.due()
    assert b.wait_s() == IDLE_POLL_S  # 5 s left, waited on in short polls
    clock.advance(4.9)
    assert not b.due() and abs(b.wait_s() - 0.1) < 1e-9
    clock.advance(0.1)
    assert b.due()
    assert len(b.take()) == 3
    assert not b.due()  # an empty buffer is never due


def test_the_rest_of_a_request_starts_a_new_period():
    clock = FakeClock()
    b = batcher(clock, max_events=2, period=1.0)
    b.add(item(3))
    b.take()
    assert len(b) == 1 and not b.due()
    clock.advance(1.0)
    assert b.due()


def test_an_empty_wait_over_the_rest_of_the_period_ends_it():
    clock = FakeClock()  # never moves: only the queue's answer can end the period
    short = batcher(clock, period=0.01)
    short.add(item(1))
    assert short.wait_s() == 0.01 and short.waited_out(short.wait_s())
    long = batcher(clock, period=1.0)
    long.add(item(1))
    assert not long.waited_out(long.wait_s())  # 0.75 s still to go
    assert not batcher(clock).waited_out(IDLE_POLL_S)  # nothing buffered: keep waiting


def test_an_item_without_events_is_finished_at_once():
    b = batcher()
    tracker = b.add(QueueItem(1, [], 0.0, 0))
    assert tracker.pending == 0 and len(b) == 0 and not b.due()
