"""service.workers without processes: the setting, its checks, the layout, and how /metrics adds processes up.

The processes themselves are tested end to end in tests/e2e/test_workers.py and
tests/reliability (the kill -9 oracle and the reconcile identity with two workers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from pydantic import BaseModel

from collector.api import ComponentSpec, hookimpl
from collector.config import ServiceConfig, load_config
from collector.errors import ConfigError
from collector.plugins import load_registry
from collector.runtime import metrics_merge
from collector.runtime.layout import StorageLayout
from collector.runtime.service import Service


def _process(requests: float, queue: float, age: float, up: float, seconds: list[float]) -> str:
    """One process's exposition, as a worker would send it."""
    r = CollectorRegistry()
    Counter("collector_receiver_requests", "r", ["code"], registry=r).labels(code="204").inc(requests)
    Gauge("collector_queue_events", "q", ["exporter"], registry=r).labels(exporter="om").set(queue)
    Gauge("collector_queue_oldest_age_seconds", "a", ["exporter"], registry=r).labels(exporter="om").set(age)
    Gauge("collector_up", "u", registry=r).set(up)
    h = Histogram("collector_request_seconds", "h", buckets=(0.1, 1.0), registry=r)
    for s in seconds:
        h.observe(s)
    return generate_latest(r).decode()


def _scrape(metrics: list[object]) -> dict[str, float]:
    text = generate_latest(metrics_merge.registry_of(metrics)).decode()  # type: ignore[arg-type]
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_counters_and_histograms_add_up_ages_take_the_oldest_and_up_is_the_primarys() -> None:
    primary = metrics_merge.parse(_process(0, 5, 1.0, 1, []))
    workers = [
        metrics_merge.parse(_process(10, 3, 30.0, 1, [0.05, 0.5])),
        metrics_merge.parse(_process(7, 4, 12.0, 1, [2.0])),
    ]
    got = _scrape(metrics_merge.merge(primary, workers))
    assert got['collector_receiver_requests_total{code="204"}'] == 17
    assert got['collector_queue_events{exporter="om"}'] == 12
    assert got['collector_queue_oldest_age_seconds{exporter="om"}'] == 30.0
    assert got["collector_up"] == 1
    assert got['collector_request_seconds_bucket{le="0.1"}'] == 1
    assert got['collector_request_seconds_bucket{le="1.0"}'] == 2
    assert got['collector_request_seconds_bucket{le="+Inf"}'] == 3
    assert got["collector_request_seconds_count"] == 3
    assert got["collector_request_seconds_sum"] == pytest.approx(2.55)


def test_a_series_only_a_worker_has_is_served() -> None:
    r = CollectorRegistry()
    Counter("collector_worker_only", "w", registry=r).inc(3)
    got = _scrape(metrics_merge.merge([], [metrics_merge.parse(generate_latest(r).decode())]))
    assert got["collector_worker_only_total"] == 3


def test_workers_setting_auto_and_bounds() -> None:
    assert ServiceConfig().worker_count() == 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert ServiceConfig(workers="auto").worker_count() == cpus
    with pytest.raises(ValueError, match="between 1 and 256"):
        ServiceConfig(workers=0)


_PUSH = """
receivers: {http: {endpoint: "127.0.0.1:8099"}}
processors: {dedupe: {}}
exporters: {debug: {}}
service:
  workers: 2
  pipelines:
    p: {receivers: [http], processors: [dedupe], exporters: [debug]}
"""


def test_a_single_process_processor_is_refused_where_workers_run_it() -> None:
    registry = load_registry()
    with pytest.raises(ConfigError) as exc:
        load_config(_PUSH, registry)
    assert "processor 'dedupe' keeps state that one process must own" in str(exc.value)
    # With one process it is fine.
    load_config(_PUSH.replace("workers: 2", "workers: 1"), registry)


def test_the_environment_overrides_workers_and_the_text_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    from collector.config import Settings

    monkeypatch.setenv("COLLECTOR_WORKERS", "auto")
    text = _PUSH.replace("processors: [dedupe], ", "").replace("workers: 2", "workers: 1")
    loaded = load_config(text, load_registry(), settings=Settings())
    assert loaded.raw.service.workers == "auto"
    assert loaded.text == text  # what worker processes load again, with their own environment


def test_worker_shards_are_numbered_directories_in_the_storage(tmp_path: Path) -> None:
    layout = StorageLayout(tmp_path)
    assert layout.for_worker(3).exporter_queue("openmeter") == tmp_path / "workers/3/exporters/openmeter/queue"
    for n in (10, 2, 1):
        layout.for_worker(n).root.mkdir(parents=True)
    (tmp_path / "workers" / "notes").mkdir()
    assert list(layout.worker_shards()) == [1, 2, 10]
    with pytest.raises(ValueError):
        layout.for_worker(0)


class _Stateful(BaseModel):
    keep_state: bool = True


class _StatefulPushPlugin:
    """A push receiver type that may run in every worker unless its configuration keeps state."""

    @hookimpl
    def collector_receivers(self) -> list[ComponentSpec[Any]]:
        def why(config: _Stateful) -> str | None:
            return "keep_state needs one process" if config.keep_state else None

        return [
            ComponentSpec(
                "receiver",
                "stateful_push",
                _Stateful,
                lambda ctx, cfg: None,  # type: ignore[arg-type, return-value]
                worker_safe=True,
                single_process=why,
            )
        ]


_STATEFUL = """
receivers: {{stateful_push: {{keep_state: {keep}}}, http: {{endpoint: "127.0.0.1:8099"}}}}
processors: {{dedupe: {{}}}}
exporters: {{debug: {{}}}}
service:
  workers: 2
  pipelines:
    stateful: {{receivers: [stateful_push], processors: [dedupe], exporters: [debug]}}
    events: {{receivers: [http], exporters: [debug]}}
"""


def test_a_push_receiver_whose_settings_need_one_process_runs_in_the_primary(tmp_path: Path) -> None:
    registry = load_registry(extra_plugins=[("stateful", _StatefulPushPlugin())])
    loaded = load_config(_STATEFUL.format(keep="true"), registry)
    # Said to the user (logged at start, printed by `collector validate`) ...
    assert loaded.warnings == [
        "receivers.stateful_push runs in the primary process only, not in the 2 workers: keep_state needs one process"
    ]
    # ... it runs once, in the primary; the http receiver runs in the workers.
    runs = {
        role: {rid for rid in ("stateful_push", "http") if Service(loaded, registry, role=role).receiver_runs_here(rid)}
        for role in ("primary", "worker")
    }
    assert runs == {"primary": {"stateful_push"}, "worker": {"http"}}
    # (Its pipeline runs once, so the dedupe there was accepted.)

    # Configured without state, it runs in every worker, and the dedupe in its pipeline is refused.
    with pytest.raises(ConfigError) as exc:
        load_config(_STATEFUL.format(keep="false"), registry)
    assert "processor 'dedupe' keeps state that one process must own" in str(exc.value)
    loaded = load_config(_STATEFUL.format(keep="false").replace("processors: [dedupe], ", ""), registry)
    assert loaded.warnings == ["processors.dedupe is defined but no pipeline uses it; it will not run"]
    assert Service(loaded, registry, role="worker").receiver_runs_here("stateful_push")
