"""Queue and sender gauges are computed when scraped, from memory, never by a query on a loop."""

from __future__ import annotations

import threading

from prometheus_client import generate_latest

from collector.clock import FakeClock
from collector.errors import AuthError, PermanentError, RetryableError
from collector.runtime.deadletters import DeadLetterStore
from collector.runtime.sender.runner import DEAD_LETTER_RECOUNT_S
from collector.testing import eventually

CONFIG = (
    "receivers: {scripted: {}}\n"
    "exporters: {memory: {batch: {period: 0.01, max_events: 4}, "
    "retry: {initial_interval: 0.01, max_interval: 0.02, auth_interval: 0.02}}}\n"
)


def ev(i: int) -> dict:
    return {"specversion": "1.0", "id": f"e{i}", "source": "test", "type": "t", "subject": "s"}


def gauge(p, name: str) -> float | None:
    """What a scrape reports right now (get_sample_value collects the registry)."""
    return p.service.telemetry.metrics.registry.get_sample_value(name, {"exporter": "memory"})


async def test_queue_gauges_follow_the_queue_without_anyone_refreshing_them(collector_run_pipeline):
    async with collector_run_pipeline(CONFIG) as p:
        p.exporter().fail_with = [RetryableError("down")] * 30
        await p.receiver().send([ev(i) for i in range(6)])
        await eventually(lambda: gauge(p, "collector_exporter_in_flight_events") == 6)
        assert gauge(p, "collector_queue_events") == 6
        assert (gauge(p, "collector_queue_bytes") or 0) > 0
        await p.exporter().wait_for(6)
        await eventually(lambda: gauge(p, "collector_queue_events") == 0)
        assert gauge(p, "collector_exporter_in_flight_events") == 0
        assert gauge(p, "collector_queue_bytes") == 0
        assert gauge(p, "collector_queue_refusing") == 0


async def test_paused_gauge_is_read_from_the_sender_state(collector_run_pipeline):
    async with collector_run_pipeline(CONFIG) as p:
        p.exporter().fail_with = [AuthError("401", status=401)] * 20
        await p.receiver().send([ev(1)])
        await eventually(lambda: gauge(p, "collector_exporter_paused") == 1)
        await p.exporter().wait_for(1)
        await eventually(lambda: gauge(p, "collector_exporter_paused") == 0)


async def test_scrapes_never_count_dead_letters_on_the_service_loop(collector_run_pipeline, monkeypatch):
    counted_on: list[str] = []
    original = DeadLetterStore.count

    def spy(self: DeadLetterStore) -> int:
        counted_on.append(threading.current_thread().name)
        return original(self)

    monkeypatch.setattr(DeadLetterStore, "count", spy)
    async with collector_run_pipeline(CONFIG) as p:
        p.exporter().fail_with = [PermanentError("no", status=422)]
        await p.receiver().send([ev(1)])
        # The new dead letter shows at once: counted in memory as it is stored.
        await eventually(lambda: gauge(p, "collector_dead_letter_events") == 1)
        loop_thread = threading.current_thread().name
        before = list(counted_on)
        for _ in range(20):
            generate_latest(p.service.telemetry.metrics.registry)
            p.service.health()
        assert counted_on == before, "a scrape or /health queried the dead-letter store"
        assert loop_thread not in counted_on


async def test_dead_letters_removed_by_another_process_show_after_a_recount(collector_run_pipeline):
    clock = FakeClock()
    async with collector_run_pipeline(CONFIG, clock=clock) as p:
        p.exporter().fail_with = [PermanentError("no", status=422)] * 3  # the request, then each half
        await p.receiver().send([ev(1), ev(2)])
        await eventually(lambda: gauge(p, "collector_dead_letter_events") == 2)
        # `collector dlq drop` runs in another process, on its own connection.
        other = DeadLetterStore(p.service.exporters["memory"].deadletters.path)
        try:
            assert other.clear() == 2
        finally:
            other.close()
        assert gauge(p, "collector_dead_letter_events") == 2  # not recounted yet
        clock.advance(DEAD_LETTER_RECOUNT_S)
        await eventually(lambda: gauge(p, "collector_dead_letter_events") == 0)
