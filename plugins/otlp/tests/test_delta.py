"""Cumulative to delta: the rules, their persistence, and crash safety (DeltaState on its own)."""

from __future__ import annotations

from pathlib import Path

import pytest
from collector_plugin_otlp.delta import DEFAULT_MAX_SERIES, DEFAULT_SERIES_TTL, NS_RUNS, NS_SERIES, DeltaState
from collector_plugin_otlp.records import metric_points
from opentelemetry.proto.metrics.v1 import metrics_pb2
from otlp_support import T0, sum_request

NOW = 1_714_564_800.0


def points(*pts, **kwargs):
    found, _ = metric_points(sum_request(list(pts), **kwargs))
    return found


class Harness:
    """One DeltaState driven like the receiver drives it: read, plan, write, commit, settle."""

    def __init__(self, directory: Path, **kwargs) -> None:
        self.directory = directory
        self.kwargs = kwargs
        self.now = NOW  # the collector's clock
        self.state = self._open()

    def _open(self) -> DeltaState:
        state = DeltaState(self.directory, **self.kwargs)
        state.open(self.now)
        return state

    def export(self, pts, *, rejected: set[int] | None = frozenset(), settle: bool = True):
        stored = self.state.read({p.series for p in pts}, self.now)
        plan = self.state.plan(pts, stored)
        self.state.write(plan, self.now)
        if settle:
            self.state.settle(plan, None if rejected is None else set(rejected), self.now)
        return plan

    def values(self, pts, **kwargs) -> list:
        return [r.get("value", (r.get("count"), r.get("sum"))) for r in self.export(pts, **kwargs).records]

    def restart(self, *, clean: bool) -> None:
        if clean:
            self.state.close(clean=True)
        else:  # a crash: nothing is closed, the run marker stays
            self.state.store._db.close()
        self.state = self._open()


@pytest.fixture
def h(tmp_path):
    return Harness(tmp_path)


def test_first_point_counts_its_whole_value_then_differences(h):
    assert h.values(points((10, 5, {"u": "a"}))) == [5]
    assert h.values(points((20, 8, {"u": "a"}))) == [3]
    plan = h.export(points((30, 8.5, {"u": "a"})))
    assert plan.records[0]["value"] == 0.5
    assert plan.records[0]["temporality"] == "delta"
    assert plan.records[0]["start_time"] == "2024-05-01T12:00:20Z"  # the previous point's time
    assert plan.records[0]["time"] == "2024-05-01T12:00:30Z"


def test_initial_value_drop_only_remembers_the_baseline(tmp_path):
    h = Harness(tmp_path, initial_value="drop")
    assert h.values(points((10, 5, {}))) == []
    assert h.values(points((20, 9, {}))) == [4]


def test_a_resent_or_older_point_adds_nothing(h):
    assert h.values(points((10, 5, {}))) == [5]
    assert h.values(points((10, 5, {}))) == []  # the same export again
    assert h.values(points((5, 3, {}))) == []  # an older point
    assert h.values(points((20, 7, {}))) == [2]


def test_series_are_independent(h):
    assert h.values(points((10, 5, {"u": "a"}), (10, 1, {"u": "b"}))) == [5, 1]
    assert h.values(points((20, 6, {"u": "a"}), (20, 4, {"u": "b"}))) == [1, 3]
    assert h.values(points((20, 6, {"u": "a"}), (30, 4, {"u": "b"}))) == [0]


def test_several_points_of_one_series_in_one_request(h):
    assert h.values(points((10, 5, {}), (20, 7, {}), (15, 6, {}), (30, 10, {}))) == [5, 2, 3]


def test_a_lower_value_is_a_counter_reset(h):
    h.export(points((10, 50, {})))
    plan = h.export(points((20, 4, {})))  # the process restarted and counts again from 0
    assert [r["value"] for r in plan.records] == [4]
    assert h.values(points((30, 6, {}))) == [2]


def test_a_new_start_time_is_a_counter_reset(h):
    h.export(points((10, 50, {})))
    assert h.values(points((20, 70, {}), start=T0 + 15 * 10**9)) == [70]
    # and an old point from before the reset (a late re-send) adds nothing
    assert h.values(points((12, 55, {}))) == []


def test_non_monotonic_sums_go_down_without_a_reset(h):
    h.export(points((10, 50, {}), monotonic=False))
    assert h.values(points((20, 45, {}), monotonic=False)) == [-5]


def test_delta_and_gauge_points_pass_through_without_state(h):
    plan = h.export(points((10, 5, {}), cumulative=False))
    assert [r["value"] for r in plan.records] == [5] and not plan.steps
    assert h.values(points((10, 5, {}), cumulative=False)) == [5]  # no state: a re-send is the mapping's business


def test_histograms_give_count_and_sum_deltas(h):
    def hist(offset, count, total):
        dp = metrics_pb2.HistogramDataPoint(
            start_time_unix_nano=T0, time_unix_nano=T0 + offset * 10**9, count=count, sum=total
        )
        req = sum_request([])
        m = req.resource_metrics[0].scope_metrics[0].metrics[0]
        m.ClearField("sum")
        m.histogram.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        m.histogram.data_points.append(dp)
        return metric_points(req)[0]

    assert h.values(hist(10, 2, 30.0)) == [(2, 30.0)]
    assert h.values(hist(20, 5, 45.0)) == [(3, 15.0)]
    assert h.values(hist(30, 1, 7.0)) == [(1, 7.0)]  # count went down: reset


def test_state_survives_a_clean_restart_without_replays(h):
    h.values(points((10, 5, {})))
    h.restart(clean=True)
    assert h.values(points((10, 5, {}))) == []
    assert h.values(points((20, 9, {}))) == [4]
    assert h.state.store.count(NS_RUNS) == 1  # only the running one


def test_an_entry_left_by_a_crash_is_replayed_unchanged(h):
    first = h.export(points((10, 5, {})))  # committed...
    h.export(points((20, 9, {})), settle=False)  # ...then a crash around the commit of the second
    pending = h.state.read({first.records[0]["series"]}, NOW)
    h.restart(clean=False)
    plan = h.export(points((30, 12, {})))
    # the in-doubt record again (same content, so the same event id downstream), then the new delta
    assert plan.records[0] == pending[first.records[0]["series"]]["rec"]
    assert [r["value"] for r in plan.records] == [4, 3]
    assert plan.origins == [None, 0]
    # trusted from now on: a clean restart replays nothing
    h.restart(clean=True)
    assert h.values(points((40, 13, {}))) == [1]


def test_a_resend_after_a_crash_replays_without_counting_twice(h):
    h.export(points((10, 5, {})), settle=False)
    h.restart(clean=False)
    assert h.values(points((10, 5, {}))) == [5]  # the replay only; the point itself is not newer
    assert h.values(points((10, 5, {}))) == []


def test_a_rejected_record_leaves_its_series_where_it_was(h):
    h.export(points((10, 5, {})))
    assert h.values(points((20, 9, {})), rejected={0}) == [4]  # planned, refused by the pipeline
    assert h.values(points((30, 12, {}))) == [7]  # the next delta covers the refused interval


def test_a_failed_commit_restores_and_a_retry_counts_once(h):
    h.export(points((10, 5, {})))
    assert h.values(points((20, 9, {})), rejected=None) == [4]  # a call known to have committed nothing
    assert h.values(points((20, 9, {}))) == [4]


def test_an_unknown_outcome_in_this_run_is_replayed(h):
    h.export(points((10, 5, {})))
    plan = h.export(points((20, 9, {})), settle=False)
    h.state.mark_in_doubt(plan)
    again = h.export(points((30, 12, {})))
    assert [r["value"] for r in again.records] == [4, 3]
    assert again.records[0] == plan.records[0]
    assert not h.state.doubt
    h.restart(clean=True)
    assert h.state.store.count(NS_RUNS) == 1


def test_series_ttl_forgets_silent_series(tmp_path):
    h = Harness(tmp_path, series_ttl=60.0)
    h.export(points((10, 5, {})))
    stored = h.state.read({points((10, 5, {}))[0].series}, NOW + 120)
    assert stored == {}


# -- bounds: max_series, series_ttl, the WAL (issue 10, point 12) ------------------------------


def many(t: int, n: int, start: int = 0):
    return points(*[(t, 1 + t, {"u": str(i)}) for i in range(start, start + n)])


def test_the_defaults_bound_the_state():
    state = DeltaState(Path("unused"))
    assert state.max_series == DEFAULT_MAX_SERIES == 100_000
    assert state.series_ttl == DEFAULT_SERIES_TTL == 24 * 3600


def test_max_series_holds_the_count_and_refuses_the_points_of_new_series(tmp_path):
    h = Harness(tmp_path, max_series=10)
    plan = h.export(many(10, 15))
    assert len(plan.records) == 10
    assert plan.refused == list(range(10, 15))  # the data points (request ordinals) dropped
    assert h.state.store.count(NS_SERIES) == h.state.series == 10
    # the series it holds go on; new ones are still refused; the count stays at the limit
    plan = h.export(many(20, 30))
    assert [r["value"] for r in plan.records] == [10] * 10
    assert plan.refused == list(range(10, 30))
    assert h.state.store.count(NS_SERIES) == h.state.series == 10
    h.restart(clean=True)  # the count is the file's, not only this process's
    assert h.state.series == 10
    assert h.export(many(30, 1, start=20)).refused == [0]


def test_a_new_series_whose_record_was_not_committed_gives_its_place_back(tmp_path):
    h = Harness(tmp_path, max_series=1)
    assert h.values(points((10, 5, {"u": "a"})), rejected={0}) == [5]  # refused by the pipeline
    assert h.values(points((10, 6, {"u": "b"})), rejected=None) == [6]  # a commit that failed
    assert h.state.series == 0
    assert h.values(points((10, 7, {"u": "c"}))) == [7]
    assert h.state.store.count(NS_SERIES) == h.state.series == 1


def test_silent_series_expire_and_make_room_for_new_ones(tmp_path):
    h = Harness(tmp_path, max_series=2, series_ttl=3600.0)
    assert h.values(points((10, 1, {"u": "a"}), (10, 1, {"u": "b"}))) == [1, 1]
    h.now += 1800
    assert h.values(points((20, 3, {"u": "a"}))) == [2]  # a is seen: its hour starts again
    h.now += 1801  # b has been silent for more than an hour, a for half an hour
    plan = h.export(points((30, 5, {"u": "c"}), (30, 4, {"u": "a"})))
    assert [r["value"] for r in plan.records] == [5, 1]  # c takes b's place; a is still known
    assert not plan.refused
    assert h.state.store.count(NS_SERIES) == h.state.series == 2
    assert h.export(points((40, 9, {"u": "b"}))).refused == [0]  # b came back to a full state


def test_a_collector_stopped_for_longer_than_the_ttl_forgets_nothing(tmp_path):
    h = Harness(tmp_path, series_ttl=3600.0)
    assert h.values(points((10, 5, {}))) == [5]
    h.state.close(clean=True)
    h.now += 10 * 3600  # down for ten hours: the series did not go silent, the collector did
    h.state = h._open()
    assert h.values(points((20, 9, {}))) == [4]  # not its whole value again
    h.now += 3601  # an hour of the collector running without the series: now it is forgotten
    assert h.values(points((30, 12, {}))) == [12]


def test_series_ttl_null_never_forgets(tmp_path):
    h = Harness(tmp_path, series_ttl=None)
    assert h.values(points((10, 5, {}))) == [5]
    h.now += 365 * 86400
    assert h.values(points((20, 9, {}))) == [4]


def test_the_wal_is_truncated_after_many_series(tmp_path):
    h = Harness(tmp_path)
    for i in range(4):  # 20,000 series in four requests: several MB of WAL at its peak
        h.export(many(10, 5000, start=i * 5000))
    h.export(many(20, 10))  # a later small write starts the WAL again, truncated
    wal = tmp_path / "otlp-delta.sqlite-wal"
    assert wal.stat().st_size <= 4 * 1024 * 1024 + 64 * 1024


_WORKERS = """
receivers:
  otlp: {{grpc: {{endpoint: "127.0.0.1:4317"}}, http: null, metrics: {{cumulative_to_delta: {delta}}}}}
exporters: {{debug: {{}}}}
service:
  workers: 2
  pipelines:
    metrics: {{receivers: [otlp], exporters: [debug]}}
"""


def test_with_workers_the_delta_state_keeps_the_receiver_in_one_process(registry):
    """Each worker would keep its own state, and an export reaching a worker that never saw its series
    would bill the series again (tests/e2e/test_workers.py shows it end to end)."""
    from collector.config import load_config
    from collector.runtime.service import Service

    loaded = load_config(_WORKERS.format(delta="true"), registry)
    (warning,) = loaded.warnings
    assert warning.startswith("receivers.otlp runs in the primary process only, not in the 2 workers:")
    assert "metrics.cumulative_to_delta" in warning
    assert Service(loaded, registry, role="primary").receiver_runs_here("otlp")
    assert not Service(loaded, registry, role="worker").receiver_runs_here("otlp")

    loaded = load_config(_WORKERS.format(delta="false"), registry)
    assert loaded.warnings == []
    assert Service(loaded, registry, role="worker").receiver_runs_here("otlp")
    assert not Service(loaded, registry, role="primary").receiver_runs_here("otlp")


def test_max_connection_age_is_refused_beside_the_delta_state(registry):
    """Reconnecting moves a client to another worker or replica; a cumulative series must not move."""
    from collector.config import load_config
    from collector.errors import ConfigError

    aged = _WORKERS.replace('endpoint: "127.0.0.1:4317"', 'endpoint: "127.0.0.1:4317", max_connection_age: 5m')
    with pytest.raises(ConfigError) as exc:
        load_config(aged.format(delta="true"), registry)
    assert "grpc.max_connection_age moves clients between collectors" in str(exc.value)
    assert "metrics.cumulative_to_delta: false" in str(exc.value)
    receiver = load_config(aged.format(delta="false"), registry).get("receiver", "otlp").config
    assert receiver.grpc.max_connection_age == 300.0
    assert receiver.grpc.max_connection_age_grace == 30.0
