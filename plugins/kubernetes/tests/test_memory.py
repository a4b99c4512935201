"""Memory per tracked pod is bounded (docs/components/kubernetes-receiver.md, "Scale").

The receiver keeps every pod it watches between windows, so what it keeps per
pod, times the pods of the watched namespaces, is its memory.  These tests feed
the Tracker the benchmark's realistic pods (bench_pods.big_pod: ~9.6 KB of
JSON with managedFields, a kubectl last-applied-configuration, env, volumes)
and measure with tracemalloc what stays allocated once the raw objects are
dropped.  plugins/kubernetes/tests/bench_pods.py measures the same for 10,000
pods against the client's models.
"""

from __future__ import annotations

import gc
import json
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from bench_pods import T0, WINDOW, big_pod
from collector_plugin_kubernetes.accounting import MAX_RUNS
from collector_plugin_kubernetes.tracker import PODS, Tracker
from k8sobjects import container, pod, running

PODS_N = 2000
KEY = "pods/*"
# Measured on CPython 3.11: about 2,560 bytes per pod (8 labels and 2 kept annotations as dicts of the decoded
# strings, requests and limits as float dicts, 1-3 runs, the PodUsage itself).  The bound leaves ~15% for
# interpreter differences; anything that keeps a piece of the raw object (env, managedFields, the
# last-applied annotation: 1.6 KB alone) breaks it.
MAX_BYTES_PER_POD = 3 * 1024
MIN_RAW_BYTES_PER_POD = 8 * 1024
PRUNE_N = 500


def keep_annotation(key: str) -> bool:
    """What the receiver keeps with its default config: the subject annotation and the data.* ones."""
    return key == "openmeter.io/subject" or key.startswith("data.openmeter.io/")


@pytest.fixture(scope="module")
def raw_pods() -> bytes:
    """2,000 benchmark pods as the API server sends a list's items (compact JSON)."""
    return json.dumps([big_pod(i) for i in range(PODS_N)], separators=(",", ":")).encode()


@contextmanager
def tracing() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def alive() -> int:
    """Bytes allocated since tracemalloc started and still reachable."""
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def fill(raw: bytes) -> Tracker:
    """A list through Tracker.replace; the items are decoded here so that the strings the tracker keeps are
    traced, and dropped before returning, as the informer drops them."""
    tracker = Tracker(keep_annotation)
    tracker.replace(KEY, PODS, json.loads(raw), T0)
    return tracker


def test_a_tracked_pod_keeps_under_3_kib_of_a_pod_over_8_kib(raw_pods):
    assert len(raw_pods) / PODS_N > MIN_RAW_BYTES_PER_POD
    with tracing():
        before = alive()
        tracker = fill(raw_pods)
        kept = alive() - before
    assert tracker.counts()[PODS] == PODS_N
    assert kept / PODS_N < MAX_BYTES_PER_POD, f"{kept / PODS_N:,.0f} bytes per tracked pod"


def test_prune_after_the_watermark_frees_finished_pods():
    pods = [big_pod(i) for i in range(PRUNE_N)]
    running_pods = [p for p in pods if p["status"]["phase"] == "Running"]
    assert 0 < len(running_pods) < PRUNE_N
    raw = json.dumps(pods).encode()
    del pods
    with tracing():  # allocated before this: not counted
        before = alive()
        tracker = fill(raw)
        filled = alive() - before
        _prune_everything(tracker, running_pods)
        left = alive() - before
    # What remains is the uids of the listed pods that still exist on the server (the Succeeded ones), kept
    # to notice their deletion across a watch gap: a few dozen bytes each, not the pods.
    assert left < filled * 0.1, f"{left:,} of {filled:,} bytes still allocated after pruning every pod"


def _prune_everything(tracker: Tracker, running_pods: list[dict[str, Any]]) -> None:
    """Prune the finished pods, then delete the running ones and prune them too."""
    # Every Succeeded job ended before T0 + 20 windows; running pods are kept, whatever the watermark.
    assert tracker.prune(T0 + 20 * WINDOW) == PRUNE_N - len(running_pods)
    assert tracker.counts()[PODS] == len(running_pods)
    assert tracker.prune(T0 + 1000 * WINDOW) == 0

    # Deleted, a running pod stops at its deletion and goes once the watermark passes it.
    gone_at = T0 + 30 * WINDOW
    for p in running_pods:
        tracker.event(KEY, PODS, "DELETED", p, gone_at)
    assert tracker.prune(gone_at - 1) == 0, "pruned before the window of its deletion was billed"
    assert tracker.prune(gone_at) == len(running_pods)
    assert tracker.counts() == {PODS: 0, "nodes": 0, "persistentvolumes": 0, "persistentvolumeclaims": 0}


def restarted(started: float, restarts: int, last: tuple[float, float] | None) -> dict[str, Any]:
    return pod(
        "crashloop",
        annotations={"openmeter.io/subject": "acme"},
        containers=[container("main", requests={"cpu": "1"})],
        statuses=[running("main", started, restarts=restarts, last_terminated=last)],
        created=T0,
    )


def test_a_pod_restarted_1000_times_keeps_at_most_max_runs_intervals():
    """Each run lasts 20 s, then 10 s of back-off: 1,000 restarts observed one watch event at a time."""
    tracker = Tracker(keep_annotation)
    tracker.event(KEY, PODS, "ADDED", restarted(T0, 0, None), T0)
    uid = next(iter(tracker.pods))
    lengths = []
    for k in range(1, 1001):
        start = T0 + 30 * k
        tracker.event(KEY, PODS, "MODIFIED", restarted(start, k, (start - 30, start - 10)), start)
        usage = tracker.pods[uid]
        lengths.append(len(usage.runs))
        assert len(usage.closed_runs) <= MAX_RUNS
    assert max(lengths) <= MAX_RUNS + 1  # the closed runs and the open one
    # The recent runs are kept exactly: the last full minute (two runs of 20 s) bills 40 s.
    end = T0 + 30 * 1000
    assert tracker.pods[uid].seconds_in(end - 60, end) == 40
    # Joining the oldest runs bills their gaps (see the docs) but never loses a run's time.
    assert tracker.pods[uid].seconds_in(T0, end) >= 1000 * 20
