"""The prometheus receiver against the real Prometheus server (see promserver.py for the history).

The receiver runs in-process with a FakeClock set to the history's time; the
windows are 5 minutes long and aligned to the epoch, so a window holds exactly
20 scrape intervals and ``increase()`` is exact: a counter growing 1/s
increases by exactly 300 per window.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import collector_plugin_prometheus
import pytest
import yaml
from driving import advance, drive

from collector.clock import FakeClock
from collector.events import format_time, stable_id
from collector.testing import testing_registry

WINDOW = 300
GPU = {"name": "gpu_seconds", "query": "sum by (namespace) (increase(gpu_seconds_total[{window}]))"}
API = {
    "name": "api_requests",
    "query": "sum by (customer) (increase(http_requests_total[{window}]))",
    "subject_label": "customer",
}
#: Increase per 5-minute window of each subject, from the rates in promserver.SERIES.
EXPECTED = {("gpu_seconds", "team-a"): 300.0, ("gpu_seconds", "team-b"): 600.0,
            ("api_requests", "c1"): 900.0, ("api_requests", "c2"): 300.0}  # fmt: skip
SUBJECT_LABEL = {"gpu_seconds": "namespace", "api_requests": "customer"}


def rfc3339(t: float) -> str:
    return format_time(datetime.fromtimestamp(t, UTC))


def config(url: str, queries: list[dict[str, Any]] | None = None, **receiver: Any) -> str:
    rec = {
        "url": url,
        "interval": "5m",
        "offset": "0s",
        "retry_initial": "1s",
        "retry_max": "2s",
        "subject_label": "namespace",
        "queries": queries if queries is not None else [GPU, API],
        **receiver,
    }
    return yaml.safe_dump({"receivers": {"prometheus": rec}, "exporters": {"memory": {"batch": {"period": 0.01}}}})


def expected_events(starts: list[float]) -> list[dict[str, Any]]:
    """The default mapping's events for windows starting at ``starts``, computed from the history."""
    out = []
    for start in starts:
        for (query, subject), value in EXPECTED.items():
            label = SUBJECT_LABEL[query]
            out.append({
                "specversion": "1.0",
                "id": stable_id("prometheus", query, [[label, subject]], rfc3339(start)),
                "source": "prometheus",
                "type": query,
                "subject": subject,
                "time": rfc3339(start),
                "data": {label: subject, "value": value},
            })  # fmt: skip
    return out


def by_id(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(events, key=lambda e: (e["time"], e["type"], e["subject"], e["id"]))


def sample(p: Any, name: str, **labels: str) -> float:
    value = p.service.telemetry.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


@pytest.fixture
def registry():
    return testing_registry([("prometheus-under-test", collector_plugin_prometheus)])


async def test_exact_values_ids_and_times_for_known_windows(collector_run_pipeline, registry, prometheus, d0, caplog):
    w = d0 + 3600
    clock = FakeClock(start=w + 10)
    async with collector_run_pipeline(config(prometheus.url), registry=registry, clock=clock) as p:
        rec = p.service.receivers["prometheus"]
        await drive(clock, lambda: rec.watermark == w + 2 * WINDOW, until=w + 2 * WINDOW + 10, what="3 windows")
        events = await p.exporter().wait_for(12)
        orphans = sample(
            p, "collector_prometheus_dropped_series_total",
            receiver="prometheus", query="gpu_seconds", reason="missing_subject",
        )  # fmt: skip
    # The first start begins with the last complete window, [w - 300, w).
    assert by_id(events) == by_id(expected_events([w - WINDOW, w, w + WINDOW]))
    # The orphan GPU series has no namespace: skipped, counted and logged, once per window.
    assert orphans == 3
    assert "query 'gpu_seconds': 1 record(s) without label 'namespace' skipped" in caplog.text


async def test_range_query_gives_one_event_per_step(collector_run_pipeline, registry, prometheus, d0):
    w = d0 + 3600
    query = {
        "name": "gpu_minutes",
        "type": "range",
        "step": "1m",
        "query": 'sum by (namespace) (increase(gpu_seconds_total{namespace="team-a"}[{step}]))',
    }
    clock = FakeClock(start=w + 10)
    async with collector_run_pipeline(config(prometheus.url, [query]), registry=registry, clock=clock) as p:
        events = await p.exporter().wait_for(5)
    # Samples at start+1m ... end, each covering the minute before it; the event time is that minute's start.
    assert [e["time"] for e in events] == [rfc3339(w - WINDOW + 60 * i) for i in range(5)]
    assert [e["data"] for e in events] == [{"namespace": "team-a", "value": 60.0}] * 5
    assert len({e["id"] for e in events}) == 5
    assert events[0]["id"] == stable_id(
        "prometheus", "gpu_minutes", [["namespace", "team-a"]], rfc3339(w - WINDOW + 60), rfc3339(w - WINDOW)
    )  # source, query, labels, sample timestamp, window start


async def test_user_mapping_sees_the_record_and_window(collector_run_pipeline, registry, prometheus, d0):
    w = d0 + 3600
    mapping = (
        '{"type": "gpu-hours", "subject": this.labels.namespace, "time": meta.window_start,'
        ' "data": {"hours": this.value / 3600, "query": this.query, "at": this.timestamp,'
        ' "until": this.window_end}} if this.labels.namespace else None'
    )
    clock = FakeClock(start=w + 10)
    cfg = config(prometheus.url, [GPU], mapping=mapping)
    async with collector_run_pipeline(cfg, registry=registry, clock=clock) as p:
        events = await p.exporter().wait_for(2)
        dropped = sample(
            p, "collector_prometheus_dropped_series_total",
            receiver="prometheus", query="gpu_seconds", reason="mapped_to_none",
        )  # fmt: skip
    start = rfc3339(w - WINDOW)
    assert {e["subject"]: e["data"]["hours"] for e in events} == {"team-a": 300 / 3600, "team-b": 600 / 3600}
    assert events[0]["data"]["at"] == events[0]["data"]["until"] == rfc3339(w)
    # Left out by the mapping, filled with the defaults: the deterministic id, source, specversion.
    assert {e["id"] for e in events} == {
        stable_id("prometheus", "gpu_seconds", [["namespace", ns]], start) for ns in ("team-a", "team-b")
    }
    assert all(e["source"] == "prometheus" and e["specversion"] == "1.0" and e["time"] == start for e in events)
    assert dropped == 1  # the orphan series, dropped by the mapping


async def test_restart_in_the_middle_loses_and_repeats_nothing(
    collector_run_pipeline, registry, prometheus, d0, tmp_path
):
    """Uninterrupted run vs. a run stopped after two windows and restarted 3 windows later: the same events."""
    w = d0 + 3600
    last_end = w + 5 * WINDOW  # windows [w-300, w) ... [w+1200, w+1500): 6 windows
    cfg = config(prometheus.url)

    clock = FakeClock(start=w + 10)
    other = tmp_path / "uninterrupted"
    other.mkdir()
    async with collector_run_pipeline(cfg, registry=registry, clock=clock, storage_dir=other) as p:
        rec = p.service.receivers["prometheus"]
        await drive(clock, lambda: rec.watermark == last_end, until=last_end + 10, what="6 windows")
        uninterrupted = await p.exporter().wait_for(24)

    clock = FakeClock(start=w + 10)
    async with collector_run_pipeline(cfg, registry=registry, clock=clock) as p:
        rec = p.service.receivers["prometheus"]
        await drive(clock, lambda: rec.watermark == w + WINDOW, until=w + WINDOW + 10, what="2 windows")
        first = await p.exporter().wait_for(8)
    clock.advance(3 * WINDOW)  # down for three windows
    async with collector_run_pipeline(cfg, registry=registry, clock=clock) as p:
        rec = p.service.receivers["prometheus"]
        await drive(clock, lambda: rec.watermark == last_end, until=last_end + 10, what="backfill")
        second = await p.exporter().wait_for(16)

    assert len(first) == 8 and len(second) == 16
    ids = [e["id"] for e in first + second]
    assert len(ids) == len(set(ids)), "a window was collected twice"
    assert (
        by_id(first + second)
        == by_id(uninterrupted)
        == by_id(expected_events([w - WINDOW + i * WINDOW for i in range(6)]))
    )


async def test_prometheus_down_windows_fail_then_are_backfilled(collector_run_pipeline, registry, own_prometheus, d0):
    w = d0 + 3600
    own_prometheus.start()
    clock = FakeClock(start=w + 10)
    async with collector_run_pipeline(config(own_prometheus.url), registry=registry, clock=clock) as p:
        rec = p.service.receivers["prometheus"]
        await drive(clock, lambda: rec.watermark == w, until=w + 10, what="first window")
        await p.exporter().wait_for(4)

        own_prometheus.stop()
        failures_before = sample(p, "collector_pull_windows_total", receiver="prometheus", outcome="failure")
        await advance(clock, 3 * WINDOW)  # three windows come due while Prometheus is down
        await drive(
            clock,
            lambda: (
                sample(p, "collector_pull_windows_total", receiver="prometheus", outcome="failure")
                >= failures_before + 3
            ),
            until=clock.time() + 60,
            what="failed retries",
        )
        assert rec.watermark == w, "the watermark moved past a window that was not collected"
        assert "cannot connect to" in (rec.last_error or "") and "receiver prometheus: query" in rec.last_error
        assert rec.health()["retrying_window"] == str(rec.current)
        assert len(p.exporter().events) == 4

        own_prometheus.start()  # same port, same data directory
        end = w + 3 * WINDOW
        await drive(clock, lambda: rec.watermark == end, until=clock.time() + 30, what="backfill")
        events = await p.exporter().wait_for(16)
    assert by_id(events) == by_id(expected_events([w - WINDOW, w, w + WINDOW, w + 2 * WINDOW]))


async def test_invalid_promql_fails_the_whole_window_and_keeps_the_watermark(
    collector_run_pipeline, registry, prometheus, d0, caplog
):
    w = d0 + 3600
    clock = FakeClock(start=w + 10)
    async with collector_run_pipeline(config(prometheus.url), registry=registry, clock=clock) as p:
        rec = p.service.receivers["prometheus"]
        await drive(clock, lambda: rec.watermark == w, until=w + 10, what="first window")

    broken = {"name": "broken", "query": "sum(rate(gpu_seconds_total[{window}])"}
    async with collector_run_pipeline(config(prometheus.url, [GPU, broken]), registry=registry, clock=clock) as p:
        rec = p.service.receivers["prometheus"]
        await drive(
            clock,
            lambda: sample(p, "collector_pull_windows_total", receiver="prometheus", outcome="failure") >= 3,
            until=clock.time() + 2 * WINDOW,
            what="failures",
        )
        assert rec.watermark == w  # the good query's results are not committed either
        assert p.exporter().events == []
        assert sample(p, "collector_pull_windows_total", receiver="prometheus", outcome="success") == 0
        error = rec.last_error or ""
    assert "receiver prometheus: query 'broken': Prometheus answered HTTP 400 bad_data" in error
    assert "parse error" in error and "query 'gpu_seconds'" not in error  # only the failing query is named
    assert "receiver prometheus: query 'broken'" in caplog.text


async def test_more_series_than_max_series_fails_naming_the_query(collector_run_pipeline, registry, prometheus, d0):
    w = d0 + 3600
    clock = FakeClock(start=w + 10)
    async with collector_run_pipeline(config(prometheus.url, [GPU], max_series=2), registry=registry, clock=clock) as p:
        rec = p.service.receivers["prometheus"]
        await drive(clock, lambda: rec.last_error is not None, until=w + 10, what="an error")
        assert rec.watermark is None and p.exporter().events == []
    assert "receiver prometheus: query 'gpu_seconds': 3 series" in rec.last_error
    assert "more than max_series=2" in rec.last_error


EXAMPLES = Path(__file__).resolve().parents[3] / "core" / "src" / "collector" / "examples"


def example_on_memory(name: str) -> str:
    """A config example with its exporter swapped for the memory exporter."""
    data = yaml.safe_load((EXAMPLES / name).read_text(encoding="utf-8"))
    data["exporters"] = {"memory": {"batch": {"period": 0.01}}}
    data.pop("storage", None)
    data["service"].pop("telemetry", None)
    for pipeline in data["service"]["pipelines"].values():
        pipeline["exporters"] = ["memory"]
    return yaml.safe_dump(data)


async def test_the_api_requests_example_bills_requests_per_customer(collector_run_pipeline, registry, prometheus, d0):
    w = d0 + 3600
    clock = FakeClock(start=w + 60 + 10)  # offset: 1m
    cfg = example_on_memory("prometheus-api-requests.yaml")
    async with collector_run_pipeline(
        cfg, registry=registry, clock=clock, environ={"PROMETHEUS_URL": prometheus.url}
    ) as p:
        events = await p.exporter().wait_for(2)
    start = rfc3339(w - WINDOW)
    assert sorted((e["subject"], e["time"], e["data"]["value"], e["data"]["route"]) for e in events) == [
        ("c1", start, 900.0, "/api"),
        ("c2", start, 300.0, "/api"),
    ]
    labels = [["customer", "c1"], ["route", "/api"]]
    assert events[0]["source"] == "api-gateway-metrics"
    assert stable_id("api-gateway-metrics", "api_requests", labels, start) in {e["id"] for e in events}


async def test_the_gpu_hours_example_bills_gpu_hours_per_namespace(collector_run_pipeline, registry, prometheus, d0):
    w = d0 + 3600
    clock = FakeClock(start=w + 120 + 10)  # offset: 2m
    cfg = example_on_memory("prometheus-gpu-hours.yaml")
    async with collector_run_pipeline(
        cfg, registry=registry, clock=clock, environ={"PROMETHEUS_URL": prometheus.url}
    ) as p:
        events = await p.exporter().wait_for(2)
    got = sorted((e["type"], e["subject"], e["time"], e["data"]["gpu_model"]) for e in events)
    start = rfc3339(w - WINDOW)
    assert got == [
        ("gpu_hours", "team-a", start, "NVIDIA H100 80GB HBM3"),
        ("gpu_hours_requested", "team-b", start, "any"),
    ]
    hours = {e["type"]: e["data"]["gpu_hours"] for e in events}
    # One GPU (team-a) and two requested GPUs (team-b) for 5 minutes.
    assert hours == {"gpu_hours": pytest.approx(1 * 300 / 3600), "gpu_hours_requested": pytest.approx(2 * 300 / 3600)}
