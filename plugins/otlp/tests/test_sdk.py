"""The real OpenTelemetry SDK exporters (gRPC and HTTP/protobuf, gzip on and off) against the receiver."""

from __future__ import annotations

import asyncio
import re

import pytest
from otlp_support import Meter, Sdk, emit_logs, emit_spans, pipeline_yaml

from collector.testing import run_pipeline

RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")


def records_of(events: list[dict], signal: str) -> list[dict]:
    return [e["data"]["record"] for e in events if e["type"] == f"otlp.{signal}"]


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_logs_spans_and_metrics_from_the_sdk(transport, gzip, registry, tmp_path):
    async with run_pipeline(pipeline_yaml(), tmp_path, registry=registry) as p:
        receiver = p.service.receivers["otlp"]
        port = receiver.grpc.port if transport == "grpc" else receiver.http.port
        sdk = Sdk(transport, port, gzip=gzip)
        memory = p.exporter()

        # -- logs: one record per LogRecord
        entries = [
            ("request served", {"user": "acme", "tokens": 12, "ratio": 0.5, "ok": True}),
            ({"route": "/v1/chat", "codes": [200, 201]}, {"user": "globex"}),
            ("no user", {}),
        ]
        assert await asyncio.to_thread(emit_logs, sdk.log_exporter(), entries)
        logs = records_of(await memory.wait_for(3), "log")
        assert [r["body"] for r in logs] == ["request served", {"route": "/v1/chat", "codes": [200, 201]}, "no user"]
        first = logs[0]
        assert first["signal"] == "log"
        assert first["resource"]["service.name"] == "sdk-app"
        assert first["scope"] == {"name": "billing", "version": "1.2.3", "attributes": {}}
        assert first["attributes"] == {"user": "acme", "tokens": 12, "ratio": 0.5, "ok": True}
        assert RFC3339.match(first["time"]) and RFC3339.match(first["observed_time"])
        assert first["trace_id"] is None and first["span_id"] is None  # logged outside a span
        assert {"severity_number", "severity_text", "event_name"} <= set(first)
        assert [e["subject"] for e in memory.events] == ["acme", "globex", "sdk-app"]

        # -- spans: one record per span, ids in hex
        ok, spans = await asyncio.to_thread(
            emit_spans,
            sdk.span_exporter(),
            [("chat gpt-4o", {"gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 40, "user": "acme"})],
        )
        assert ok
        span = records_of(await memory.wait_for(4), "span")[0]
        ctx = spans[0].get_span_context()
        assert span["trace_id"] == f"{ctx.trace_id:032x}" and span["span_id"] == f"{ctx.span_id:016x}"
        assert span["parent_span_id"] is None and span["kind"] == "internal"
        assert span["name"] == "chat gpt-4o" and span["status"] == {"code": "unset", "message": ""}
        assert span["attributes"]["gen_ai.usage.input_tokens"] == 120
        assert span["duration_ms"] >= 0 and RFC3339.match(span["start_time"]) and RFC3339.match(span["end_time"])

        # -- metrics: one record per data point; cumulative sums and histograms become deltas
        meter = Meter()
        counter = meter.meter.create_counter("llm.tokens", unit="{token}")
        histogram = meter.meter.create_histogram("llm.latency", unit="ms")
        counter.add(5, {"user": "acme"})
        counter.add(2, {"user": "globex"})
        histogram.record(10, {"user": "acme"})
        histogram.record(20, {"user": "acme"})
        exporter = sdk.metric_exporter()
        assert await asyncio.to_thread(meter.export, exporter)
        await memory.wait_for(4 + 3)
        counter.add(3, {"user": "acme"})
        histogram.record(5, {"user": "acme"})
        assert await asyncio.to_thread(meter.export, exporter)
        metrics = records_of(await memory.wait_for(4 + 6), "metric")
        meter.shutdown()

    sums = [(r["attributes"]["user"], r["value"]) for r in metrics if r["type"] == "sum"]
    assert sums == [("acme", 5), ("globex", 2), ("acme", 3), ("globex", 0)]
    hist = [(r["count"], r["sum"]) for r in metrics if r["type"] == "histogram"]
    assert hist == [(2, 30.0), (1, 5.0)]
    m = next(r for r in metrics if r["type"] == "sum")
    assert m["name"] == "llm.tokens" and m["unit"] == "{token}" and m["monotonic"] is True
    assert m["temporality"] == "delta"  # converted from the SDK's cumulative temporality
    assert RFC3339.match(m["start_time"]) and RFC3339.match(m["time"]) and len(m["series"]) == 32
    later = [r for r in metrics if r["type"] == "sum"][2]
    assert later["start_time"] == m["time"]  # a delta covers the time since the previous point
