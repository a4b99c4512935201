"""The built-in ``openmeter`` exporter against the strict fake OpenMeter.

Events enter through the testing kit's ``scripted`` receiver, go through the
exporter's durable queue and the sender, and are posted by the real exporter
(aiohttp) to ``FakeOpenMeter`` running in-process.  The fake enforces the
ingest contract and injects the failures; the assertions compare *id sets*:
everything sent arrives (or is dead-lettered for a stated reason), nothing else
arrives, and duplicates only where a request was in flight when it failed.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from collector.builtin.openmeter.exporter import parse_retry_after
from collector.clock import FakeClock
from collector.testing import eventually
from collector.testing.harness import RunningPipeline
from support.fake_openmeter import FakeOpenMeter

TOKEN = "om-token-7f3a9c21"
V1 = "/api/v1/events"
V3 = "/api/v3/openmeter/events"
BATCH = "application/cloudevents-batch+json"
FAST_RETRY = "retry: {initial_interval: 0.01, max_interval: 0.1, auth_interval: 0.1}"


def ev(i: int | str, **extra: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"e{i}",
        "source": "exporter-test",
        "type": "api-call",
        "subject": "cust-1",
        "time": "2024-05-01T12:00:00Z",
        "data": {"n": str(i)},
        **extra,
    }


def config(url: str, extra: str = "", *, token: str | None = TOKEN, max_events: int = 20) -> str:
    token_line = f"    token: {token}\n" if token else ""
    return (
        "receivers: {scripted: {}}\n"
        "exporters:\n"
        "  openmeter:\n"
        f"    url: {url}\n"
        f"{token_line}"
        "    timeout: 0.5\n"
        f"    batch: {{period: 0.01, max_events: {max_events}}}\n"
        f"    {FAST_RETRY}\n" + "".join(f"    {line}\n" for line in extra.splitlines() if line)
    )


class RecordingFake(FakeOpenMeter):
    """The fake, also keeping the headers of every ingest request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers: list[dict[str, str]] = []
        original = self._handle_ingest

        async def spy(request):
            self.headers.append({k.lower(): v for k, v in request.headers.items()})
            return await original(request)

        self._handle_ingest = spy  # picked up by the router when the fake opens


@pytest.fixture
async def fake() -> AsyncIterator[RecordingFake]:
    server = RecordingFake(token=TOKEN)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def arrived(fake: FakeOpenMeter) -> Counter[str]:
    return Counter(e["id"] for e in fake.arrivals)


def metric(p: RunningPipeline, name: str, **labels: str) -> float:
    return p.service.telemetry.metrics.registry.get_sample_value(name, labels) or 0.0


async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    await eventually(predicate, timeout=timeout, message=what)


async def send(p: RunningPipeline, events: list[dict[str, Any]]) -> set[str]:
    await p.service.receivers["scripted"].send(events)
    return {e["id"] for e in events}


async def drained(p: RunningPipeline) -> None:
    runner = p.service.exporters["openmeter"]
    await until(lambda: runner.queue.stats().items == 0, what="exporter queue drained")


# ---------------------------------------------------------------------------
# Endpoints, auth header, content type


@pytest.mark.parametrize(
    ("suffix", "api", "path", "status"),
    [
        ("", "auto", V1, 204),
        ("", "v1", V1, 204),
        ("/api/v3/openmeter", "auto", V3, 202),  # a Konnect-style URL ending in /v3/openmeter
        ("/api/v3/openmeter/", "auto", V3, 202),
        ("", "v3", V3, 202),
    ],
)
async def test_delivers_to_the_v1_or_v3_endpoint_with_bearer_token(
    collector_run_pipeline, fake, suffix, api, path, status
):
    async with collector_run_pipeline(config(fake.url + suffix, f"api: {api}")) as p:
        ids = await send(p, [ev(i) for i in range(25)])  # two requests: max_events is 20
        await fake.wait_for_ids(ids)
        await drained(p)
        assert metric(p, "collector_exporter_delivered_events_total", exporter="openmeter") == 25
    assert set(arrived(fake)) == ids
    assert all(n == 1 for n in arrived(fake).values())
    assert {(r.path, r.status) for r in fake.requests} == {(path, status)}
    for headers in fake.headers:
        assert headers["content-type"] == BATCH
        assert headers["authorization"] == f"Bearer {TOKEN}"


async def test_token_from_token_file(collector_run_pipeline, fake, tmp_path):
    token_file = tmp_path / "openmeter-token"
    token_file.write_text(TOKEN + "\n", encoding="utf-8")  # mounted secrets often end with a newline
    yaml_text = config(fake.url, f"token_file: '{token_file}'", token=None)
    async with collector_run_pipeline(yaml_text) as p:
        ids = await send(p, [ev(i) for i in range(3)])
        await fake.wait_for_ids(ids)
    assert set(arrived(fake)) == ids
    assert fake.headers[0]["authorization"] == f"Bearer {TOKEN}"
    assert all(r.status == 204 for r in fake.requests)


# ---------------------------------------------------------------------------
# Transient failures: retried until delivered


@pytest.mark.parametrize(
    ("status", "retry_after", "as_date", "klass"),
    [
        (500, None, False, "http_5xx"),
        (502, None, False, "http_5xx"),
        (503, 1, False, "http_5xx"),
        (503, 1, True, "http_5xx"),
        (429, 1, False, "http_429"),
        (429, 1, True, "http_429"),
        (408, None, False, "http_408"),
    ],
)
async def test_transient_statuses_are_retried_and_honour_retry_after(
    collector_run_pipeline, fake, status, retry_after, as_date, klass
):
    count = 1 if retry_after else 3
    fake.fail_next(status, count=count, retry_after=retry_after, retry_after_date=as_date)
    async with collector_run_pipeline(config(fake.url)) as p:
        t0 = time.time()
        ids = await send(p, [ev(i) for i in range(5)])
        await fake.wait_for_ids(ids, timeout=10)
        first_arrival = min(a.received_at for a in fake.arrival_log)
        await drained(p)
        assert metric(p, "collector_exporter_retries_total", exporter="openmeter", **{"class": klass}) == count
    assert set(arrived(fake)) == ids and all(n == 1 for n in arrived(fake).values())
    assert [r.status for r in fake.requests] == [status] * count + [204]
    if retry_after is not None:
        # the refusal said "not before 1 s" (an HTTP-date is rounded up): the sender never comes back sooner
        assert first_arrival - t0 >= 0.95


def test_parse_retry_after_seconds_and_http_date():
    now = time.time()
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


async def test_a_stall_beyond_the_timeout_is_retried(collector_run_pipeline, fake):
    fake.stall_next(3.0)  # holds the first request far beyond the exporter's 0.3 s timeout
    async with collector_run_pipeline(config(fake.url, "timeout: 0.3")) as p:
        t0 = time.monotonic()
        ids = await send(p, [ev(i) for i in range(4)])
        await fake.wait_for_ids(ids, timeout=5)
        assert time.monotonic() - t0 < 2.5, "delivered by the stalled request, not by a retry"
        await drained(p)
        timeouts = metric(p, "collector_exporter_retries_total", exporter="openmeter", **{"class": "timeout"})
        network = metric(p, "collector_exporter_retries_total", exporter="openmeter", **{"class": "network"})
        assert timeouts + network >= 1
    # the stalled request may still record its copy before the fake stops: at most one duplicate each
    counts = arrived(fake)
    assert set(counts) == ids
    assert all(n <= 2 for n in counts.values())


async def test_connection_refused_for_a_while_then_delivered(collector_run_pipeline, fake):
    async with collector_run_pipeline(config(fake.url)) as p:
        await fake.pause_listening(0.8)
        ids = await send(p, [ev(i) for i in range(6)])
        await asyncio.sleep(0.3)
        assert not fake.arrivals
        assert metric(p, "collector_exporter_retries_total", exporter="openmeter", **{"class": "network"}) >= 1
        await fake.wait_for_ids(ids, timeout=10)
        await drained(p)
    assert set(arrived(fake)) == ids and all(n == 1 for n in arrived(fake).values())


# ---------------------------------------------------------------------------
# Permanent rejection: split, dead-letter only the bad ones


async def test_rejected_events_are_isolated_and_dead_lettered_the_rest_delivered_once(collector_run_pipeline, fake):
    bad = {"e3", "e11"}
    fake.reject_ids(bad)
    async with collector_run_pipeline(config(fake.url, max_events=16)) as p:
        runner = p.service.exporters["openmeter"]
        ids = await send(p, [ev(i) for i in range(16)])
        await fake.wait_for_ids(ids - bad)
        await until(lambda: runner.deadletters.count() == 2, what="two dead letters")
        await drained(p)
        letters = runner.deadletters.list()
        assert metric(p, "collector_exporter_dead_lettered_events_total", exporter="openmeter", reason="rejected") == 2
        assert p.service.health()["ready"] is True
    assert {d.event["id"] for d in letters} == bad
    for letter in letters:
        assert letter.reason == "rejected" and letter.status == 400
        assert letter.body and '"invalid"' in letter.body and letter.event["id"] in letter.body
        assert letter.event == ev(int(letter.event["id"][1:]))  # kept whole, for replay
    counts = arrived(fake)
    assert set(counts) == ids - bad
    assert all(n == 1 for n in counts.values())
    assert 400 in {r.status for r in fake.requests}


async def test_a_body_over_openmeters_limit_is_split_and_an_oversized_event_dead_lettered(collector_run_pipeline):
    fake = FakeOpenMeter(token=TOKEN, max_body_bytes=900)
    await fake.start()
    try:
        async with collector_run_pipeline(config(fake.url, max_events=12)) as p:
            runner = p.service.exporters["openmeter"]
            events = [ev(i) for i in range(12)] + [ev("huge", data={"pad": "x" * 1000})]
            ids = await send(p, events)
            await fake.wait_for_ids(ids - {"ehuge"})
            await until(lambda: runner.deadletters.count() == 1, what="one dead letter")
            await drained(p)
            (letter,) = runner.deadletters.list()
        assert letter.event["id"] == "ehuge" and letter.status == 413
        assert set(arrived(fake)) == ids - {"ehuge"}
        assert all(n == 1 for n in arrived(fake).values())
    finally:
        await fake.stop()


# ---------------------------------------------------------------------------
# Credentials refused: pause, stay not-ready, keep everything, resume


async def test_401_pauses_the_exporter_then_it_resumes_and_delivers_everything(collector_run_pipeline, fake, caplog):
    monkey_logger = logging.getLogger("collector")
    old_propagate = monkey_logger.propagate
    monkey_logger.propagate = True
    caplog.set_level(logging.DEBUG)
    try:
        fake.unauthorized_for(1.0)
        async with collector_run_pipeline(config(fake.url)) as p:
            runner = p.service.exporters["openmeter"]
            ids = await send(p, [ev(i) for i in range(5)])
            await until(lambda: runner.stats.paused, what="exporter paused")
            health = p.service.health()
            assert health["ready"] is False
            detail = health["components"]["exporters"]["openmeter"]
            assert detail["paused"] is True and "401" in detail["paused_reason"]
            assert not fake.arrivals
            ids |= await send(p, [ev(i) for i in range(5, 8)])  # intake goes on while paused
            await fake.wait_for_ids(ids, timeout=10)
            await until(lambda: not runner.stats.paused, what="exporter resumed")
            await drained(p)
            assert p.service.health()["ready"] is True
            assert runner.deadletters.count() == 0
    finally:
        monkey_logger.propagate = old_propagate
    assert set(arrived(fake)) == ids and all(n == 1 for n in arrived(fake).values())
    assert 401 in {r.status for r in fake.requests}
    assert "paused" in caplog.text
    assert TOKEN not in caplog.text
    assert all(TOKEN not in repr(vars(r)) for r in caplog.records)


# ---------------------------------------------------------------------------
# Too old to deliver


async def test_events_older_than_max_age_are_dead_lettered(collector_run_pipeline, fake):
    # max_age is decided by the service's clock (queue stamps and sender alike):
    # the test moves it a day on instead of waiting.
    clock = FakeClock()
    fake.fail_next(503, count=100_000)
    yaml_text = config(fake.url, "queue: {kind: durable, max_age: 1d}")
    async with collector_run_pipeline(yaml_text, clock=clock) as p:
        runner = p.service.exporters["openmeter"]
        ids = await send(p, [ev(i) for i in range(3)])
        await until(lambda: len(fake.requests) >= 1, what="a first (failed) attempt")
        assert runner.deadletters.count() == 0
        clock.advance(86_400 + 1)
        await until(lambda: runner.deadletters.count() == 3, what="three dead letters")
        await drained(p)
        letters = runner.deadletters.list()
        # An event committed after the clock moved is young: it is delivered, not dead-lettered.
        fake.clear_faults()
        later = await send(p, [ev("fresh")])
        await fake.wait_for_ids(later)
    assert {d.event["id"] for d in letters} == ids
    assert {d.reason for d in letters} == {"max_age"}
    assert set(arrived(fake)) == later
