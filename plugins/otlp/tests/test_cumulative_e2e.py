"""Cumulative counters through the whole collector: restarts, re-sent exports, resets, crashes, concurrency.

The SDK's counters are cumulative; the receiver bills the deltas.  Whatever
happens to the collector in between, the sum of the usage events (unique by
id, as OpenMeter deduplicates them) must equal what the application counted.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from otlp_support import (
    METER_MAPPING,
    Meter,
    Sdk,
    free_port,
    grpc_channel,
    grpc_export,
    pipeline_yaml,
    sum_request,
)

from collector.clock import FakeClock
from collector.errors import RetryableError
from collector.testing import run_pipeline


def config(grpc_port: int, http_port: int) -> str:
    return pipeline_yaml(mapping=METER_MAPPING).replace(
        '{grpc: {endpoint: "127.0.0.1:0"}, http: {endpoint: "127.0.0.1:0"}',
        f'{{grpc: {{endpoint: "127.0.0.1:{grpc_port}"}}, http: {{endpoint: "127.0.0.1:{http_port}"}}',
    )


async def arrived(p, count: int) -> list[dict]:
    """The events delivered, once at least ``count`` are there (and a moment for any unexpected extra)."""
    await p.exporter().wait_for(count)
    await asyncio.sleep(0.2)
    return p.exporter().events


def billed(events: list[dict]) -> dict[str, float]:
    """Usage per subject, counting each event id once (OpenMeter deduplicates on source + id)."""
    out: dict[str, float] = {}
    seen: set[str] = set()
    for e in events:
        if e["id"] in seen:
            continue
        seen.add(e["id"])
        out[e["subject"]] = out.get(e["subject"], 0) + e["data"]["value"]
    return out


async def test_exported_many_times_with_restarts_resends_and_a_reset_bills_the_true_total(registry, tmp_path):
    grpc_port, http_port = free_port(), free_port()
    yaml_text = config(grpc_port, http_port)
    storage = tmp_path / "storage"
    events: list[dict] = []
    true_total = {"acme": 0, "globex": 0}

    app = Meter()
    tokens = app.meter.create_counter("llm.tokens", unit="{token}")
    grpc_sdk = Sdk("grpc", grpc_port, gzip=True).metric_exporter()
    http_sdk = Sdk("http", http_port).metric_exporter()

    def use(user: str, n: int) -> None:
        tokens.add(n, {"user": user})
        true_total[user] += n

    resend: bytes = b""
    async with run_pipeline(yaml_text, storage, registry=registry) as p:
        for i in range(5):
            use("acme", 10 + i)
            use("globex", 1)
            exporter = grpc_sdk if i % 2 else http_sdk
            assert await asyncio.to_thread(app.export, exporter)
        data = app.collect()
        resend = encode_metrics(data).SerializeToString()
        assert await asyncio.to_thread(app.export, grpc_sdk, data)  # nothing new: zero deltas, dropped
        events += await arrived(p, 10)

    # the collector restarts (same storage); the application never noticed
    async with run_pipeline(yaml_text, storage, registry=registry) as p:
        with grpc_channel(grpc_port) as channel:
            for _ in range(3):  # a client re-sending an export the collector already committed
                await asyncio.to_thread(grpc_export, channel, "metrics", resend)
        assert await asyncio.to_thread(app.export, grpc_sdk)  # nothing new since: zero deltas, dropped
        use("acme", 7)
        assert await asyncio.to_thread(app.export, http_sdk)
        # the application restarts: its counters start again from zero, with a new start time
        app.shutdown()
        app = Meter()
        tokens = app.meter.create_counter("llm.tokens", unit="{token}")
        use("acme", 3)
        use("globex", 2)
        assert await asyncio.to_thread(app.export, grpc_sdk)
        use("acme", 4)
        assert await asyncio.to_thread(app.export, grpc_sdk)
        events += await arrived(p, 4)
    app.shutdown()

    assert billed(events) == true_total
    assert len({e["id"] for e in events}) == len(events)  # clean restarts replay nothing


async def test_a_crash_between_commit_and_answer_neither_loses_nor_double_counts(registry, tmp_path, monkeypatch):
    grpc_port, http_port = free_port(), free_port()
    yaml_text = config(grpc_port, http_port)
    storage = tmp_path / "storage"
    events: list[dict] = []
    with grpc_channel(grpc_port) as channel:
        async with run_pipeline(yaml_text, storage, registry=registry) as p:
            await asyncio.to_thread(grpc_export, channel, "metrics", sum_request([(10, 100, {"user": "acme"})]))
            await asyncio.to_thread(grpc_export, channel, "metrics", sum_request([(20, 130, {"user": "acme"})]))
            # The process dies right after the second commit: its run is never closed cleanly.
            delta = p.service.receivers["otlp"].delta
            monkeypatch.setattr(delta, "close", lambda clean: delta.store.close())
            events += await arrived(p, 2)
        async with run_pipeline(yaml_text, storage, registry=registry) as p:
            # the client never got its answer for t=20 and retries it, then carries on
            await asyncio.to_thread(grpc_export, channel, "metrics", sum_request([(20, 130, {"user": "acme"})]))
            await asyncio.to_thread(grpc_export, channel, "metrics", sum_request([(30, 150, {"user": "acme"})]))
            events += await arrived(p, 2)
    assert billed(events) == {"acme": 150}
    assert len(events) == 4  # 100, 30, the replay of 30 (same id: deduplicated downstream), 20


async def test_concurrent_exports_of_one_series_do_not_double_count(registry, tmp_path):
    grpc_port, http_port = free_port(), free_port()
    async with run_pipeline(config(grpc_port, http_port), tmp_path, registry=registry) as p:
        same = sum_request([(10, 100, {"user": "acme"}), (10, 5, {"user": "globex"})]).SerializeToString()
        later = sum_request([(20, 120, {"user": "acme"})]).SerializeToString()

        def send(payload: bytes) -> None:
            with grpc_channel(grpc_port) as channel:
                grpc_export(channel, "metrics", payload)

        with ThreadPoolExecutor(8) as pool:
            futures = [asyncio.wrap_future(pool.submit(send, same if i % 4 else later)) for i in range(16)]
            await asyncio.gather(*futures)
        events = await arrived(p, 2)
    # Whatever the order, the total is the last cumulative value of each series, counted once.
    assert billed(events) == {"acme": 120, "globex": 5}
    assert len({e["id"] for e in events}) == len(events)


async def test_a_refused_export_under_backpressure_counts_once_when_retried(registry, tmp_path):
    grpc_port, http_port = free_port(), free_port()
    small = "memory: {batch: {period: 0.01}, queue: {kind: memory, max_bytes: 100}}"
    text = config(grpc_port, http_port).replace("memory: {batch: {period: 0.01}}", small)

    async def send_until_accepted(channel, request) -> None:
        for _ in range(100):  # what a client does under backpressure: retry later
            try:
                await asyncio.to_thread(grpc_export, channel, "metrics", request)
                return
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.sleep(0.05)
        raise AssertionError("never accepted")

    async with run_pipeline(text, tmp_path, registry=registry) as p:
        memory = p.exporter()
        memory.fail_with.extend(RetryableError("down") for _ in range(1000))
        with grpc_channel(grpc_port) as ch:
            await asyncio.to_thread(grpc_export, ch, "metrics", sum_request([(10, 100, {"user": "acme"})]))
            second = sum_request([(20, 130, {"user": "acme"})])
            with pytest.raises(grpc.RpcError) as refused:  # the queue is full: nothing accepted
                await asyncio.to_thread(grpc_export, ch, "metrics", second)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            memory.fail_with.clear()  # the destination is back; the queue drains
            await send_until_accepted(ch, second)
            await send_until_accepted(ch, sum_request([(30, 135, {"user": "acme"})]))
        events = await arrived(p, 3)
    assert billed(events) == {"acme": 135}


async def test_a_full_delta_state_refuses_new_series_visibly_and_expired_ones_make_room(registry, tmp_path, caplog):
    """Issue 10, point 12: the state is bounded, and a refusal is counted, logged and answered."""
    clock = FakeClock()
    text = pipeline_yaml(receiver="metrics: {max_series: 3, series_ttl: 1h}", mapping=METER_MAPPING)

    def sample(p, name: str) -> float:
        value = p.service.telemetry.metrics.registry.get_sample_value(name, {"receiver": "otlp"})
        return value or 0.0

    def refusal_logs() -> list[str]:
        return [r.getMessage() for r in caplog.records if "max_series" in r.getMessage()]

    async with run_pipeline(text, tmp_path, registry=registry, clock=clock) as p:
        port = p.service.receivers["otlp"].grpc.port
        with grpc_channel(port) as ch:

            def export(*pts):
                return grpc_export(ch, "metrics", sum_request(list(pts))).partial_success

            five = [(10, 100 + i, {"user": f"u{i}"}) for i in range(5)]
            answer = await asyncio.to_thread(export, *five)
            assert answer.rejected_data_points == 2
            assert "max_series" in answer.error_message
            assert sample(p, "collector_otlp_delta_series") == 3
            assert sample(p, "collector_otlp_delta_refused_series_total") == 2
            assert len(refusal_logs()) == 1
            assert p.service.receivers["otlp"].health()["delta_series"] == {"series": 3, "max_series": 3}
            # the known series go on; the refused ones again: counted, but not logged again so soon
            answer = await asyncio.to_thread(export, *[(20, 200 + i, {"user": f"u{i}"}) for i in range(5)])
            assert answer.rejected_data_points == 2
            assert sample(p, "collector_otlp_delta_refused_series_total") == 4
            assert len(refusal_logs()) == 1
            # two hours later, only u0 is still reporting: the others expire and make room
            clock.advance(1800)
            await asyncio.to_thread(export, (30, 300, {"user": "u0"}))
            clock.advance(1801)
            answer = await asyncio.to_thread(export, (40, 1, {"user": "u3"}), (40, 2, {"user": "u4"}))
            assert answer.rejected_data_points == 0
            assert sample(p, "collector_otlp_delta_series") == 3
            assert sample(p, "collector_otlp_delta_refused_series_total") == 4
