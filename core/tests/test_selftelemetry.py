"""The OTLP push of the collector's own metrics and logs (docs/operations.md).

The receiving end is the project's own OTLP receiver (``receiver/otlp``) in a
second, in-process collector whose mapping turns every pushed data point and
log record into an event in a memory exporter.  The pushing end is a real
``collector run`` process, so the CLI, the supervisor's wiring and the log
set-up are the ones a user runs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import collector_plugin_otlp
import pytest
import yaml
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from prometheus_client import CollectorRegistry, Histogram

from collector.config import ConfigErrors, load_config
from collector.errors import ConfigError
from collector.runtime.selftelemetry import QueueingLogHandler, encode_metrics, load_proto, resource_attributes
from collector.testing import eventually, run_pipeline, testing_registry

SECRET = "s3cr3t-otel-token-77"

# Every pushed record becomes one event carrying the record (ids from content: a repeated push is a new id).
MAPPING = """\
{"specversion": "1.0", "type": "otlp." + this.signal, "source": "self", "id": stable_id(this, this.time),
 "subject": this.resource["service.name"], "time": coalesce(this.time, this.observed_time),
 "data": {"record": this}}"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@asynccontextmanager
async def otlp_sink(tmp: Path, token: str | None = None) -> AsyncIterator[Any]:
    """A collector with the otlp receiver (HTTP only, optionally with a bearer token) -> memory exporter."""
    auth = f", auth: {{tokens: [{token}]}}" if token else ""
    indented = "\n".join("      " + line for line in MAPPING.splitlines())
    text = f"""
receivers:
  otlp: {{grpc: null, http: {{endpoint: "127.0.0.1:0"}}{auth}}}
processors:
  mapping:
    expression: |
{indented}
exporters:
  memory: {{batch: {{period: 0.01}}}}
"""
    registry = testing_registry([("otlp", collector_plugin_otlp)])
    async with run_pipeline(text, tmp, registry=registry) as p:
        receiver: Any = p.service.receivers["otlp"]
        yield p, f"http://127.0.0.1:{receiver.http.port}"


@contextmanager
def collector_process(tmp: Path, otlp: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``collector run`` with an http receiver -> debug exporter and ``service.telemetry.otlp``."""
    intake, admin = _free_port(), _free_port()
    config = {
        "receivers": {"http": {"endpoint": f"127.0.0.1:{intake}"}},
        "exporters": {"debug": {}},
        "storage": {"directory": str(tmp / "data")},
        "service": {
            "telemetry": {"endpoint": f"127.0.0.1:{admin}", "log_format": "json", "otlp": otlp},
            "drain_timeout": 2,
            "pipelines": {"events": {"receivers": ["http"], "exporters": ["debug"]}},
        },
    }
    path = tmp / "collector.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    log_path = tmp / "collector.log"
    script = Path(sys.executable).with_name("collector")
    env = {**os.environ, "OTEL_TOKEN": SECRET}
    env.pop("COLLECTOR_CONFIG", None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [str(script), "run", "-c", str(path)], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp
        )
    try:
        yield {"proc": proc, "intake": f"http://127.0.0.1:{intake}/api/v1/events", "log": log_path}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _event(i: int) -> dict[str, Any]:
    return {"specversion": "1.0", "type": "t", "source": "s", "id": f"e{i}", "subject": "c"}


async def _post_until_up(session: aiohttp.ClientSession, url: str, event: dict[str, Any], log: Path) -> float:
    """POST one event, retrying while the collector starts; returns the seconds the accepted POST took."""
    deadline = time.monotonic() + 15
    while True:
        started = time.monotonic()
        try:
            async with session.post(url, json=event, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                if resp.status < 300:
                    return time.monotonic() - started
        except aiohttp.ClientConnectionError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError("collector intake never answered:\n" + log.read_text(errors="replace")[-3000:])
        await asyncio.sleep(0.05)


def _records(sink: Any, signal_name: str) -> list[dict[str, Any]]:
    return [e["data"]["record"] for e in sink.exporter().events if e["data"]["record"]["signal"] == signal_name]


def _latest_value(records: list[dict[str, Any]], name: str, **attrs: str) -> float | None:
    points = [r for r in records if r["name"] == name and all(r["attributes"].get(k) == v for k, v in attrs.items())]
    return max(points, key=lambda r: r["time"])["value"] if points else None


async def test_metrics_and_logs_arrive_at_an_otlp_receiver_and_the_header_secret_is_never_logged(
    tmp_path: Path,
) -> None:
    async with otlp_sink(tmp_path / "sink", token=SECRET) as (sink, endpoint):
        otlp = {
            "endpoint": endpoint,
            "headers": {"authorization": "Bearer ${OTEL_TOKEN}"},
            "interval": "200ms",
            "timeout": "2s",
        }
        with collector_process(tmp_path, otlp) as c:
            async with aiohttp.ClientSession() as session:
                await _post_until_up(session, c["intake"], _event(0), c["log"])
                for i in range(1, 5):
                    await _post_until_up(session, c["intake"], _event(i), c["log"])

            def counted() -> bool:
                metrics = _records(sink, "metric")
                return _latest_value(metrics, "collector_receiver_accepted_events", receiver="http") == 5.0

            await eventually(counted, timeout=15, message="the accepted-events counter, 5, pushed over OTLP")
            metrics = _records(sink, "metric")
            accepted = [r for r in metrics if r["name"] == "collector_receiver_accepted_events"]
            assert accepted[-1]["type"] == "sum" and accepted[-1]["monotonic"] is True
            assert _latest_value(metrics, "collector_receiver_received_events", receiver="http") == 5.0
            resource = accepted[-1]["resource"]
            assert resource["service.name"] == "collector" and resource["service.instance.id"]
            assert resource["service.version"]
            histograms = [r for r in metrics if r["type"] == "histogram"]
            assert histograms, "the request-duration histograms are pushed too"

            def started_logged() -> bool:
                return any("collector started" in str(r["body"]) for r in _records(sink, "log"))

            await eventually(started_logged, timeout=15, message="the start-up log line pushed over OTLP")
            started = next(r for r in _records(sink, "log") if "collector started" in str(r["body"]))
            assert started["severity_text"] == "INFO" and started["scope"]["name"] == "collector.runtime.service"

            c["proc"].send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(c["proc"].wait, 15) == 0
        log_text = c["log"].read_text(errors="replace")
        assert SECRET not in log_text
        assert not [line for line in log_text.splitlines() if "OTLP export" in line and "failed" in line]
        assert all(SECRET not in str(r) for r in _records(sink, "log"))


async def test_an_endpoint_that_never_answers_does_not_slow_intake_and_warns_once(tmp_path: Path) -> None:
    # A listening socket nobody accepts from: every push waits for its timeout.
    import socket

    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(1)
    port = blackhole.getsockname()[1]
    try:
        otlp = {"endpoint": f"http://127.0.0.1:{port}", "interval": "100ms", "timeout": "500ms"}
        with collector_process(tmp_path, otlp) as c:
            async with aiohttp.ClientSession() as session:
                await _post_until_up(session, c["intake"], _event(0), c["log"])

                def warned() -> bool:
                    return "OTLP export of the collector's metrics" in c["log"].read_text(errors="replace")

                await eventually(warned, timeout=10, message="a warning about the unreachable endpoint")
                # Pushes keep timing out meanwhile; intake answers as fast as ever.
                took = [await _post_until_up(session, c["intake"], _event(i), c["log"]) for i in range(1, 21)]
            assert max(took) < 0.4, took
            started = time.monotonic()
            c["proc"].send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(c["proc"].wait, 15) == 0
            assert time.monotonic() - started < 5, "the final push is bounded by timeout"
        lines = c["log"].read_text(errors="replace").splitlines()
        warnings = [line for line in lines if "OTLP export of the collector's metrics" in line]
        assert len(warnings) == 1, warnings
    finally:
        blackhole.close()


def test_histograms_keep_their_bounds_and_bucket_counts() -> None:
    registry = CollectorRegistry()
    h = Histogram("collector_x_seconds", "x", ["op"], buckets=[0.1, 1.0], registry=registry)
    for v in (0.05, 0.5, 0.7, 3.0):
        h.labels(op="a").observe(v)
    pb = load_proto()
    body = encode_metrics(pb, registry.collect(), resource_attributes("i-1"), start_ns=1, now_ns=2)
    request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
    (metric,) = request.resource_metrics[0].scope_metrics[0].metrics
    (point,) = metric.histogram.data_points
    assert metric.name == "collector_x_seconds"
    assert list(point.explicit_bounds) == [0.1, 1.0]
    assert list(point.bucket_counts) == [1, 2, 1]
    assert (point.count, point.sum) == (4, pytest.approx(4.25))
    assert (point.start_time_unix_nano, point.time_unix_nano) == (1, 2)


def test_a_full_log_queue_drops_and_counts_instead_of_blocking() -> None:
    import logging

    drops: list[int] = []
    handler = QueueingLogHandler(logging.INFO, 3, on_drop=lambda: drops.append(1))
    logger = logging.getLogger("collector.test.selftelemetry")
    logger.addHandler(handler)
    try:
        started = time.monotonic()
        for i in range(10):
            logger.warning("line %d", i)
        assert time.monotonic() - started < 1
    finally:
        logger.removeHandler(handler)
    assert [item.body for item in handler.take(10)] == ["line 0", "line 1", "line 2"]
    assert handler.dropped == 7 and len(drops) == 7


def test_the_section_without_opentelemetry_proto_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if the package were not installed: every import of it fails.
    for name in [n for n in sys.modules if n.startswith("opentelemetry.proto")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "opentelemetry.proto", None)
    with pytest.raises(ConfigError, match=r"collector-core\[otel\]"):
        load_proto()
    text = """
receivers: {http: {}}
exporters: {debug: {}}
service:
  telemetry: {otlp: {endpoint: "http://127.0.0.1:4318"}}
  pipelines: {p: {receivers: [http], exporters: [debug]}}
"""
    with pytest.raises(ConfigErrors) as err:
        load_config(text, testing_registry())
    assert "service.telemetry.otlp" in str(err.value) and "collector-core[otel]" in str(err.value)
