"""One ``/metrics`` for a collector made of several processes (docs/operations.md, "Worker processes").

The primary process scrapes each worker's registry (as Prometheus text, over
the worker's control socket) and serves the sum with its own, so that a
dashboard, an alert or the reconcile identity sees one collector whatever
``service.workers`` is:

* counters, histograms and summaries add up, series by series;
* gauges add up too (events in the queues, in flight, dead letters), except
  the ones that are a state or an age: those take the largest value
  (:data:`GAUGE_MAX`, and any ``*_age_seconds`` or ``*_timestamp_seconds``);
* a few describe the process that serves ``/metrics``: the primary's value
  wins (:data:`GAUGE_PRIMARY`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

GAUGE_MAX = frozenset(
    {
        "collector_queue_refusing",
        "collector_exporter_paused",
        "collector_pull_lag_seconds",
        "collector_leader",
        "collector_coordinator_leader",
    }
)
GAUGE_PRIMARY = frozenset({"collector_up", "collector_start_time_seconds", "collector_build_info"})


def _gauge_rule(name: str) -> str:
    if name in GAUGE_PRIMARY:
        return "primary"
    if name in GAUGE_MAX or name.endswith(("_age_seconds", "_timestamp_seconds")):
        return "max"
    return "sum"


@dataclass
class _Family:
    name: str
    documentation: str
    type: str
    unit: str
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)


def parse(text: str) -> list[Metric]:
    """A worker's exposition text as metric families."""
    return list(text_string_to_metric_families(text))


def merge(primary: Iterable[Metric], workers: Iterable[Iterable[Metric]]) -> list[Metric]:
    """The primary's families with every worker's folded in, by the rules above."""
    families: dict[str, _Family] = {}

    def add(metrics: Iterable[Metric], *, from_primary: bool) -> None:
        for metric in metrics:
            fam = families.get(metric.name)
            if fam is None:
                fam = families[metric.name] = _Family(metric.name, metric.documentation, metric.type, metric.unit)
            rule = _gauge_rule(metric.name) if metric.type == "gauge" else "sum"
            for sample in metric.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = fam.samples.get(key)
                if sample.name.endswith("_created"):
                    # The first process's start of the series: the earliest.
                    fam.samples[key] = sample.value if old is None else min(old, sample.value)
                elif old is None:
                    fam.samples[key] = sample.value
                elif rule == "sum":
                    fam.samples[key] = old + sample.value
                elif rule == "max":
                    fam.samples[key] = max(old, sample.value)
                # "primary": the primary's value (added first) stays

    add(primary, from_primary=True)
    for worker in workers:
        add(worker, from_primary=False)
    out = []
    for fam in families.values():
        metric = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        metric.samples = [Sample(name, dict(labels), value) for (name, labels), value in fam.samples.items()]
        out.append(metric)
    return out


class StaticCollector(Collector):
    """Serves a fixed list of families (a merged scrape) through ``generate_latest``."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics


def registry_of(metrics: list[Metric]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StaticCollector(metrics))
    return registry
