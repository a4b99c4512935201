"""Pod, node and volume accounting per window, against hand-computed truth.

The objects are plain dicts shaped as the API server sends them (camelCase).
Times are seconds after ``T0``; windows are ``[T0 + a, T0 + b)``.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from typing import Any

import pytest
from collector_plugin_kubernetes.accounting import (
    MAX_RUNS,
    CapacityUsage,
    PodUsage,
    effective_resources,
    merge,
    parse_time,
    run_intervals,
)
from collector_plugin_kubernetes.quantity import QuantityError
from hypothesis import given
from hypothesis import strategies as st

T0 = 1796551200.0  # 2026-12-06T10:00:00Z


def ts(offset: float) -> str:
    """RFC 3339 for ``T0 + offset`` (whole seconds, as metav1.Time serialises)."""
    return datetime.fromtimestamp(T0 + offset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def running(start: float) -> dict[str, Any]:
    return {"running": {"startedAt": ts(start)}}


def terminated(start: float, finish: float, code: int = 0) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "startedAt": ts(start), "finishedAt": ts(finish), "reason": "Completed"}}


WAITING = {"waiting": {"reason": "CrashLoopBackOff"}}


def status(name: str, state: dict[str, Any], last: dict[str, Any] | None = None, restarts: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "state": state,
        "lastState": last or {},
        "ready": "running" in state,
        "restartCount": restarts,
        "image": "busybox",
        "imageID": "",
    }


def container(name: str, requests: dict[str, Any] | None = None, limits: dict[str, Any] | None = None, **extra: Any):
    resources: dict[str, Any] = {}
    if requests is not None:
        resources["requests"] = requests
    if limits is not None:
        resources["limits"] = limits
    return {"name": name, "image": "busybox", "resources": resources, **extra}


def pod(
    *,
    uid: str = "uid-1",
    phase: str = "Running",
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    init_statuses: list[dict[str, Any]] | None = None,
    deletion: float | None = None,
    conditions: list[dict[str, Any]] | None = None,
    **spec_extra: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": "job-1",
        "namespace": "team-a",
        "uid": uid,
        "creationTimestamp": ts(-30),
        "labels": {"app": "job"},
        "annotations": {"openmeter.io/subject": "customer-1"},
    }
    if deletion is not None:
        metadata["deletionTimestamp"] = ts(deletion)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "nodeName": "node-1",
            "containers": containers or [container("main", {"cpu": "500m", "memory": "1Gi"})],
            "initContainers": init_containers or [],
            **spec_extra,
        },
        "status": {
            "phase": phase,
            "containerStatuses": statuses or [],
            "initContainerStatuses": init_statuses or [],
            "conditions": conditions or [],
        },
    }


def window(usage: PodUsage | CapacityUsage, a: float, b: float) -> float:
    return usage.seconds_in(T0 + a, T0 + b)


# --- times ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-06T10:00:00Z", T0),
        ("2026-12-06T10:00:00.5Z", T0 + 0.5),
        ("2026-12-06T10:00:00.250000Z", T0 + 0.25),
        ("2026-12-06T10:00:00.123456789Z", T0 + 0.123456789),
        ("2026-12-06T10:00:00+00:00", T0),
        ("2026-12-06T11:30:00+01:30", T0),
        ("2026-12-06T08:00:00-02:00", T0),
        ("2026-12-06t10:00:00z", T0),
    ],
)
def test_parse_time(text: str, expected: float) -> None:
    assert parse_time(text) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("text", ["", "2026-12-06", "2026-12-06T10:00:00", "2026-02-31T10:00:00Z", "yesterday"])
def test_parse_time_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_time(text)


# --- effective requests and limits -----------------------------------------------------------------


def test_requests_sum_over_containers_in_cores_and_bytes_with_gpus() -> None:
    p = pod(
        containers=[
            container("a", {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"}, {"nvidia.com/gpu": "1"}),
            container("b", {"cpu": "1.5", "memory": "512Mi"}, {"amd.com/gpu": "2"}),
        ]
    )
    assert effective_resources(p, "requests") == {
        "cpu": 2.0,
        "memory": 1073741824.0 + 536870912.0,
        "nvidia.com/gpu": 1.0,
        "amd.com/gpu": 2.0,  # defaulted from the limit, as the API server does
    }
    assert effective_resources(p, "limits") == {"nvidia.com/gpu": 1.0, "amd.com/gpu": 2.0}


def test_missing_request_defaults_to_limit_and_missing_limit_adds_nothing() -> None:
    p = pod(containers=[container("a", limits={"cpu": "2", "memory": "1Gi"}), container("b", {"cpu": "1"})])
    assert effective_resources(p, "requests") == {"cpu": 3.0, "memory": 1073741824.0}
    assert effective_resources(p, "limits") == {"cpu": 2.0, "memory": 1073741824.0}


def test_init_containers_count_by_their_maximum_per_resource() -> None:
    p = pod(
        init_containers=[
            container("migrate", {"cpu": "4", "memory": "128Mi"}),
            container("fetch", {"cpu": "1", "memory": "2Gi"}),
        ],
        containers=[container("a", {"cpu": "1", "memory": "256Mi"}), container("b", {"cpu": "1", "memory": "256Mi"})],
    )
    # cpu: max(1 + 1, max(4, 1)) = 4; memory: max(512Mi, max(128Mi, 2Gi)) = 2Gi.
    assert effective_resources(p, "requests") == {"cpu": 4.0, "memory": 2 * 1073741824.0}


def test_sidecars_add_to_the_app_sum_and_to_later_init_containers() -> None:
    p = pod(
        init_containers=[
            container("before", {"cpu": "1"}),
            container("proxy", {"cpu": "500m"}, restartPolicy="Always"),
            container("after", {"cpu": "3"}),
        ],
        containers=[container("app", {"cpu": "1"}), container("app2", {"cpu": "1"})],
    )
    # apps + sidecar = 2.5; init steps: before 1, proxy 0.5, after 3 + 0.5 = 3.5 -> 3.5.
    assert effective_resources(p, "requests") == {"cpu": 3.5}
    smaller = pod(
        init_containers=[container("proxy", {"cpu": "500m"}, restartPolicy="Always"), container("after", {"cpu": "2"})],
        containers=[container("app", {"cpu": "1"}), container("app2", {"cpu": "1"})],
    )
    # apps + sidecar = 2.5 beats the init step 2 + 0.5 = 2.5 (equal) and a sidecar declared *after*
    # an init container does not add to it.
    assert effective_resources(smaller, "requests") == {"cpu": 2.5}
    late_sidecar = pod(
        init_containers=[container("after", {"cpu": "3"}), container("proxy", {"cpu": "500m"}, restartPolicy="Always")],
        containers=[container("app", {"cpu": "1"})],
    )
    assert effective_resources(late_sidecar, "requests") == {"cpu": 3.0}


def test_overhead_is_added_to_requests_and_only_to_limited_resources() -> None:
    p = pod(
        containers=[container("a", {"cpu": "1", "memory": "1Gi"}, {"memory": "2Gi"})],
        overhead={"cpu": "250m", "memory": "120Mi"},
    )
    assert effective_resources(p, "requests") == {"cpu": 1.25, "memory": 1073741824.0 + 125829120.0}
    assert effective_resources(p, "limits") == {"memory": 2 * 1073741824.0 + 125829120.0}


def test_pod_level_resources_replace_the_container_aggregate() -> None:
    p = pod(
        containers=[container("a", {"cpu": "1", "memory": "1Gi"}), container("b", {"cpu": "1"})],
        resources={"requests": {"cpu": "3"}, "limits": {"cpu": "4", "memory": "4Gi"}},
        overhead={"cpu": "100m"},
    )
    assert effective_resources(p, "requests") == {"cpu": 3.1, "memory": 1073741824.0}
    assert effective_resources(p, "limits") == {"cpu": 4.1, "memory": 4 * 1073741824.0}
    only_limit = pod(containers=[container("a")], resources={"limits": {"cpu": "2"}})
    assert effective_resources(only_limit, "requests") == {"cpu": 2.0}


def test_ephemeral_containers_have_no_resources() -> None:
    p = pod(ephemeralContainers=[{"name": "debug", "image": "busybox", "resources": {"requests": {"cpu": "8"}}}])
    assert effective_resources(p, "requests") == {"cpu": 0.5, "memory": 1073741824.0}


def test_an_invalid_quantity_on_a_pod_raises_quantity_error() -> None:
    with pytest.raises(QuantityError, match="12Qi"):
        effective_resources(pod(containers=[container("a", {"cpu": "12Qi"})]), "requests")


# --- intervals -------------------------------------------------------------------------------------


def test_merge_joins_overlapping_and_touching_runs() -> None:
    assert merge([(5.0, 7.0), (0.0, 2.0), (2.0, 3.0), (6.0, 9.0), (4.0, 4.0)]) == [(0.0, 3.0), (5.0, 9.0)]
    assert merge([(0.0, 2.0), (1.0, None), (5.0, 6.0)]) == [(0.0, None)]
    assert merge([(3.0, None), (0.0, 1.0)]) == [(0.0, 1.0), (3.0, None)]
    assert merge([]) == []


def test_run_intervals_read_every_container_and_skip_never_started() -> None:
    p = pod(
        init_statuses=[status("init", terminated(0, 10))],
        statuses=[
            status("a", running(40), last=terminated(12, 30), restarts=1),
            status("b", {"terminated": {"exitCode": 1, "finishedAt": ts(20), "reason": "ContainerCannotRun"}}),
        ],
    )
    p["status"]["ephemeralContainerStatuses"] = [status("debug", running(0))]
    assert run_intervals(p) == [(T0, T0 + 10), (T0 + 12, T0 + 30), (T0 + 40, None)]


# --- pods ------------------------------------------------------------------------------------------


def test_five_second_job_in_a_sixty_second_window_is_billed_five_seconds() -> None:
    usage = PodUsage.from_pod(pod(phase="Succeeded", statuses=[status("main", terminated(10, 15))]))
    assert window(usage, 0, 60) == 5.0
    assert usage.requests["cpu"] * window(usage, 0, 60) == 2.5  # core-seconds
    assert usage.ended_at() == T0 + 15
    assert (usage.namespace, usage.name, usage.node, usage.phase) == ("team-a", "job-1", "node-1", "Succeeded")
    assert usage.annotations["openmeter.io/subject"] == "customer-1"


def test_pod_spanning_three_windows_sums_exactly() -> None:
    usage = PodUsage.from_pod(pod(statuses=[status("main", running(30))]))
    # Still running: the open run counts up to each window's end.
    assert [window(usage, a, a + 60) for a in (0, 60)] == [30.0, 60.0]
    assert usage.ended_at() is None
    usage.update(pod(phase="Succeeded", statuses=[status("main", terminated(30, 140))]))
    parts = [window(usage, a, a + 60) for a in (0, 60, 120, 180)]
    assert parts == [30.0, 60.0, 20.0, 0.0]
    assert sum(parts) == 110.0 == window(usage, -1000, 1000)


def test_restarts_seen_while_watching_are_kept_after_last_state_rolls_over() -> None:
    versions = [
        pod(statuses=[status("main", running(0))]),
        pod(statuses=[status("main", WAITING, last=terminated(0, 10), restarts=1)]),
        pod(statuses=[status("main", running(20), last=terminated(0, 10), restarts=1)]),
        pod(statuses=[status("main", WAITING, last=terminated(20, 25), restarts=2)]),
        pod(statuses=[status("main", running(45), last=terminated(20, 25), restarts=2)]),
        pod(phase="Failed", statuses=[status("main", terminated(45, 52, code=1), last=terminated(20, 25), restarts=2)]),
    ]
    usage = PodUsage.from_pod(versions[0])
    for version in versions[1:]:
        usage.update(version)
    # The first run is no longer on the object, but was seen: 10 + 5 + 7 seconds, back-off gaps unbilled.
    assert (T0, T0 + 10) not in run_intervals(versions[-1])
    assert usage.runs == [(T0, T0 + 10), (T0 + 20, T0 + 25), (T0 + 45, T0 + 52)]
    assert window(usage, 0, 60) == 22.0
    assert window(usage, 0, 30) + window(usage, 30, 60) == 22.0


def test_a_run_whose_end_was_missed_ends_at_the_next_start() -> None:
    usage = PodUsage.from_pod(pod(statuses=[status("main", running(0))]))
    # A relist after missed events: two restarts later, the first run is gone from the object.
    usage.update(pod(statuses=[status("main", running(45), last=terminated(20, 25), restarts=2)]))
    assert usage.runs == [(T0, T0 + 25), (T0 + 45, None)]


def test_init_containers_then_app_containers() -> None:
    usage = PodUsage.from_pod(
        pod(
            init_containers=[container("init", {"cpu": "2"})],
            init_statuses=[status("init", terminated(0, 10))],
            statuses=[status("main", running(12))],
        )
    )
    assert usage.requests["cpu"] == 2.0  # the init container's 2 cores beat the app's 0.5
    assert window(usage, 0, 60) == 10.0 + 48.0  # the 2 s between them (image pull, start) are not billed


def test_sidecar_keeps_the_pod_running_until_it_stops() -> None:
    usage = PodUsage.from_pod(
        pod(
            phase="Succeeded",
            init_containers=[
                container("setup", {"cpu": "1"}),
                container("proxy", {"cpu": "100m"}, restartPolicy="Always"),
            ],
            init_statuses=[status("setup", terminated(0, 5)), status("proxy", terminated(5, 61))],
            statuses=[status("main", terminated(6, 60))],
        )
    )
    assert usage.requests["cpu"] == 1.0  # max(0.5 + 0.1, 1)
    assert window(usage, 0, 60) == 60.0
    assert window(usage, 60, 120) == 1.0


def test_succeeded_pod_listed_after_downtime_is_billed_from_its_timestamps() -> None:
    # The collector was down from 0 to 600; the pod ran 100..130 and 170..175 (two containers).
    listed = pod(
        phase="Succeeded",
        statuses=[status("a", terminated(100, 130)), status("b", terminated(170, 175))],
    )
    usage = PodUsage.from_pod(listed)
    per_window = {a: window(usage, a, a + 60) for a in range(0, 600, 60)}
    assert per_window[60] == 20.0 and per_window[120] == 10.0 + 5.0
    assert sum(per_window.values()) == 35.0


def test_pending_pod_is_not_billed() -> None:
    usage = PodUsage.from_pod(
        pod(phase="Pending", statuses=[status("main", {"waiting": {"reason": "ContainerCreating"}})])
    )
    assert window(usage, 0, 60) == 0.0
    assert usage.ended_at() is None
    usage.mark_deleted(pod(phase="Pending"), at=T0 + 90)
    assert usage.ended_at() == -math.inf


def test_deleted_with_a_still_running_container_stops_at_the_deletion() -> None:
    # Grace period: deletionTimestamp is the kill deadline (40); the deletion is observed earlier (25).
    usage = PodUsage.from_pod(pod(statuses=[status("main", running(0))]))
    usage.mark_deleted(pod(statuses=[status("main", running(0))], deletion=40), at=T0 + 25)
    assert usage.runs == [(T0, T0 + 25)]
    assert window(usage, 0, 60) == 25.0
    # Observed late (after downtime): the deletionTimestamp is the earlier one.
    late = PodUsage.from_pod(pod(statuses=[status("main", running(0))]))
    late.mark_deleted(pod(statuses=[status("main", running(0))], deletion=40), at=T0 + 500)
    assert window(late, 0, 600) == 40.0
    assert late.ended_at() == T0 + 40
    # No deletionTimestamp on the last known version (deletion seen as absence in a relist).
    gone = PodUsage.from_pod(pod(statuses=[status("main", running(0))]))
    gone.mark_deleted(pod(statuses=[status("main", running(0))]), at=T0 + 70)
    assert window(gone, 0, 120) == 70.0


def test_terminating_pod_stops_at_its_finish_time() -> None:
    usage = PodUsage.from_pod(pod(statuses=[status("main", running(0))]))
    usage.update(pod(statuses=[status("main", running(0))], deletion=90))
    assert window(usage, 0, 60) == 60.0
    assert window(usage, 60, 120) == 30.0  # capped at the kill deadline while it still shows running
    usage.update(pod(statuses=[status("main", terminated(0, 75))], deletion=90))
    assert window(usage, 60, 120) == 15.0
    usage.mark_deleted(pod(statuses=[status("main", terminated(0, 75))], deletion=90), at=T0 + 100)
    assert window(usage, 0, 600) == 75.0
    assert usage.ended_at() == T0 + 75


def test_unknown_phase_keeps_counting_running_containers() -> None:
    usage = PodUsage.from_pod(pod(phase="Unknown", statuses=[status("main", running(0))]))
    assert window(usage, 3600, 3660) == 60.0
    usage.mark_deleted(pod(phase="Unknown", statuses=[status("main", running(0))]), at=T0 + 3630)
    assert window(usage, 3600, 3660) == 30.0


def test_failed_pod_with_stale_running_state_stops_at_its_last_transition() -> None:
    failed = pod(
        phase="Failed",
        statuses=[status("main", running(0))],
        conditions=[{"type": "DisruptionTarget", "status": "True", "lastTransitionTime": ts(50)}],
    )
    usage = PodUsage.from_pod(failed)
    assert window(usage, 0, 120) == 50.0
    assert usage.ended_at() == T0 + 50


def test_stored_runs_are_bounded() -> None:
    usage = PodUsage.from_pod(pod(statuses=[status("main", running(0))]))
    for restart in range(1, 200):
        start = restart * 10
        usage.update(pod(statuses=[status("main", running(start), last=terminated(start - 10, start - 5))]))
    assert len(usage.closed_runs) <= MAX_RUNS
    assert len(usage.runs) <= MAX_RUNS + 1
    # Recent windows are exact (5 of every 10 seconds); only the oldest runs were joined.
    assert window(usage, 1900, 1960) == 30.0
    assert window(usage, 0, 2000) >= 199 * 5


def test_pod_without_uid_is_refused() -> None:
    p = pod()
    del p["metadata"]["uid"]
    with pytest.raises(ValueError, match="uid"):
        PodUsage.from_pod(p)


def test_pod_usage_uses_slots() -> None:
    usage = PodUsage.from_pod(pod())
    assert not hasattr(usage, "__dict__")


# --- properties --------------------------------------------------------------------------------------

runs_strategy = st.lists(
    st.tuples(st.integers(0, 1000), st.integers(0, 200)).map(lambda r: (float(r[0]), float(r[0] + r[1]))),
    max_size=12,
)


@given(runs_strategy, st.one_of(st.none(), st.integers(0, 1000)))
def test_merge_measures_the_union(runs: list[tuple[float, float]], open_start: int | None) -> None:
    intervals: list[tuple[float, float | None]] = list(runs)
    if open_start is not None:
        intervals.append((float(open_start), None))
    merged = merge(intervals)
    for (_, end), (next_start, _) in itertools.pairwise(merged):
        assert end is not None and end < next_start  # sorted, disjoint, not touching
    for t in range(0, 1300):  # integer grid oracle: t is covered iff some run covers it
        covered = any(s <= t and (e is None or t < e) for s, e in intervals)
        assert covered == any(s <= t and (e is None or t < e) for s, e in merged)


@given(runs_strategy, st.lists(st.integers(-100, 1400), min_size=1, max_size=8))
def test_adjacent_windows_sum_to_the_total(runs: list[tuple[float, float]], cuts: list[int]) -> None:
    usage = PodUsage.from_pod(
        pod(phase="Succeeded", statuses=[status(f"c{i}", terminated(s, e)) for i, (s, e) in enumerate(runs)])
    )
    edges = sorted({-100, 1400, *cuts})
    parts = [window(usage, a, b) for a, b in itertools.pairwise(edges)]
    total = sum(e - s for s, e in merge(runs))  # type: ignore[operator]
    assert sum(parts) == total == window(usage, -100, 1400)


@given(
    st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 100)), max_size=8),
    st.lists(st.floats(-10, 1200), max_size=8),
)
def test_adjacent_windows_sum_with_fractional_times(runs: list[tuple[float, float]], cuts: list[float]) -> None:
    usage = PodUsage.from_pod(pod())
    usage.runs = merge((T0 + s, T0 + s + d) for s, d in runs)
    edges = sorted({-10.0, 1200.0, *cuts})
    parts = [window(usage, a, b) for a, b in itertools.pairwise(edges)]
    assert math.fsum(parts) == pytest.approx(window(usage, -10, 1200), abs=1e-5)


# --- nodes and volumes -----------------------------------------------------------------------------


def obj(kind: str, *, phase: str | None = None, deletion: float | None = None, **sections: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": f"{kind}-1",
        "uid": f"uid-{kind}",
        "creationTimestamp": ts(0),
        "labels": {"x": "y"},
    }
    if kind == "PersistentVolumeClaim":
        metadata["namespace"] = "team-a"
    if deletion is not None:
        metadata["deletionTimestamp"] = ts(deletion)
    body: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": metadata, **sections}
    if phase is not None:
        body.setdefault("status", {})["phase"] = phase
    return body


def test_node_capacity_from_creation_to_deletion() -> None:
    node = obj("Node", status={"capacity": {"cpu": "64", "memory": "256Gi", "nvidia.com/gpu": "8", "pods": "110"}})
    usage = CapacityUsage.from_object("node", node, observed_at=T0 + 500)
    assert usage.capacity["cpu"] == 64.0 and usage.capacity["nvidia.com/gpu"] == 8.0
    assert usage.capacity["memory"] == 256 * 1073741824.0
    assert window(usage, 0, 60) == 60.0  # from creation, not from when the collector saw it
    assert usage.ended_at() is None
    usage.mark_deleted(node, at=T0 + 90)
    assert window(usage, 60, 120) == 30.0 and usage.ended_at() == T0 + 90
    assert (usage.kind, usage.namespace, usage.name, usage.labels) == ("node", None, "Node-1", {"x": "y"})


def test_persistent_volume_capacity_is_its_spec_storage() -> None:
    pv = obj("PersistentVolume", phase="Available", spec={"capacity": {"storage": "10Gi"}})
    usage = CapacityUsage.from_object("persistentvolume", pv, observed_at=T0 + 5)
    assert usage.capacity == {"storage": 10 * 1073741824.0}
    assert window(usage, -60, 60) == 60.0
    usage.update(
        obj("PersistentVolume", phase="Released", deletion=30, spec={"capacity": {"storage": "10Gi"}}), T0 + 31
    )
    assert window(usage, 0, 60) == 30.0  # deletion requested at 30


def test_claim_is_billed_only_once_bound() -> None:
    pending = obj("PersistentVolumeClaim", phase="Pending", spec={"resources": {"requests": {"storage": "5Gi"}}})
    usage = CapacityUsage.from_object("persistentvolumeclaim", pending, observed_at=T0 + 1)
    assert window(usage, 0, 60) == 0.0 and usage.since is None
    bound = obj("PersistentVolumeClaim", phase="Bound", status={"capacity": {"storage": "8Gi"}})
    bound["status"]["phase"] = "Bound"
    usage.update(bound, observed_at=T0 + 20)
    assert usage.capacity == {"storage": 8 * 1073741824.0}  # what was provisioned, not what was asked
    assert window(usage, 0, 60) == 40.0
    usage.mark_deleted(bound, at=T0 + 100)
    assert window(usage, 60, 120) == 40.0
    assert usage.namespace == "team-a"


def test_claim_first_seen_bound_counts_from_creation_and_stops_when_lost() -> None:
    bound = obj("PersistentVolumeClaim", status={"phase": "Bound", "capacity": {"storage": "1Gi"}})
    usage = CapacityUsage.from_object("persistentvolumeclaim", bound, observed_at=T0 + 300)
    assert window(usage, 0, 60) == 60.0
    usage.update(obj("PersistentVolumeClaim", status={"phase": "Lost", "capacity": {"storage": "1Gi"}}), T0 + 330)
    assert window(usage, 300, 360) == 30.0


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kind"):
        CapacityUsage.from_object("pod", obj("Pod"), observed_at=T0)


def test_deletion_noticed_as_absence_from_a_relist() -> None:
    usage = PodUsage.from_pod(pod(statuses=[status("main", running(0))]))
    usage.mark_deleted({}, at=T0 + 45)  # no last version: the relist no longer lists it
    assert window(usage, 0, 60) == 45.0 and usage.name == "job-1"
    node = CapacityUsage.from_object("node", obj("Node", status={"capacity": {"cpu": "4"}}), observed_at=T0)
    node.mark_deleted({}, at=T0 + 10)
    assert window(node, 0, 60) == 10.0 and node.capacity == {"cpu": 4.0}


def test_runs_already_billed_are_forgotten_and_later_windows_keep_their_seconds():
    usage = PodUsage.from_pod(
        {
            "metadata": {"uid": "u", "name": "p", "namespace": "n"},
            "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "1"}}}]},
            "status": {"phase": "Running", "containerStatuses": [{"name": "c", "state": {
                "running": {"startedAt": "2026-12-06T12:02:00Z"}},
                "lastState": {"terminated": {"startedAt": "2026-12-06T12:00:00Z",
                                             "finishedAt": "2026-12-06T12:00:30Z", "exitCode": 1}}}]},
        }
    )  # fmt: skip
    t0 = 1_796_558_400.0  # 12:00:00
    assert usage.seconds_in(t0, t0 + 60) == 30 and len(usage.runs) == 2
    usage.forget_before(t0 + 60)  # the 12:00 window is billed
    assert len(usage.runs) == 1 and usage.closed_runs == []
    assert usage.seconds_in(t0 + 120, t0 + 180) == 60
