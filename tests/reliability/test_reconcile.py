"""The collector's metrics reconcile after a run full of faults.

A collector subprocess (http receiver -> durable queue -> openmeter exporter)
takes load from the load generator while the fake OpenMeter answers 500, 503
and 429 with Retry-After, 400 for chosen ids (poison events), 401 for a while,
stalls a request beyond the exporter's timeout (it is recorded anyway: a
duplicate) and refuses connections for a while; the receiver also gets
invalid requests.  Once the queue has drained, ``/metrics`` (scraped over
HTTP) must satisfy the identities documented in ``collector.telemetry``::

    received_events = accepted_events + sum(refused_events)            per receiver
    enqueued_events = delivered_events + sum(dead_lettered_events)
                      + queue_events                                   per exporter

and the fake's set of arrived ids must equal the accepted ids minus the
dead-lettered ids (read back with ``collector dlq list --json``).
"""

from __future__ import annotations

import json
import random
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from collector.testing import eventually_sync
from support.collector_proc import (
    EXPORTER_ID,
    CollectorProcess,
    collector_command,
    collector_config,
    free_port,
    metric_sum,
)
from support.fake_openmeter import FakeOpenMeter
from support.loadgen import Key, LoadGenerator, make_event

RECEIVER_MAX_EVENTS = 50


def _post(url: str, body: bytes, content_type: str, method: str = "POST") -> int:
    req = urllib.request.Request(url, data=body if method == "POST" else None, method=method)
    req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _send_invalid(url: str) -> dict[str, int]:
    """Requests the receiver must refuse; returns the events each refusal counts."""
    batch = "application/cloudevents-batch+json"
    expected = {"invalid": 0, "too_large": 0}
    # malformed JSON: one (unknown) event, refused as invalid
    assert _post(url, b"{not json", batch) == 400
    expected["invalid"] += 1
    # wrong content type: 415, counted as one invalid event
    assert _post(url, b"{}", "text/plain") == 415
    expected["invalid"] += 1
    # three events, one without `type` and one with a non-object `data`: all three refused
    bad = [make_event("invalid", f"bad-{i}") for i in range(3)]
    del bad[1]["type"]
    bad[2]["data"] = [1, 2]
    assert _post(url, orjson.dumps(bad), batch) == 400
    expected["invalid"] += 3
    # more events than max_events: 413, all of them refused as too_large
    many = [make_event("invalid", f"many-{i}") for i in range(RECEIVER_MAX_EVENTS + 10)]
    assert _post(url, orjson.dumps(many), batch) == 413
    expected["too_large"] += len(many)
    # wrong method: 405, no events at all
    assert _post(url, b"", batch, method="GET") == 405
    return expected


def _dead_lettered(proc: CollectorProcess) -> set[Key]:
    out = subprocess.run(
        [*collector_command(), "dlq", "list", "-c", str(proc.config_path), "--json", "--limit", "100000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    keys: set[Key] = set()
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            ev = json.loads(line)["event"]
            keys.add((ev["source"], ev["id"]))
    return keys


def _wait(cond: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    eventually_sync(cond, timeout=timeout, interval=0.02, message=what)


def _statuses(fake: FakeOpenMeter) -> Counter[int]:
    return Counter(r.status for r in fake.requests)


def _run_fault_script(fake: FakeOpenMeter, poison: set[str]) -> None:
    """One fault after the other, each waited for until the sender has met it."""
    time.sleep(0.2)
    for status, count, retry_after in ((500, 3, None), (503, 2, 1), (429, 2, 1)):
        fake.fail_next(status, count=count, retry_after=retry_after)
        _wait(lambda: fake.pending_faults() == 0, f"{count} x {status} consumed")
    fake.unauthorized_for(None)  # until cleared: a revoked token
    _wait(lambda: _statuses(fake)[401] >= 3, "401s answered")
    fake.clear_faults()  # the token works again (this also drops the poison ids...)
    fake.reject_ids(poison)  # ... so set them again
    fake.stall_next(1.0)  # beyond the 0.5 s timeout; the events are recorded anyway
    _wait(lambda: fake.pending_faults() == 0, "stall consumed")
    fake.pause_listening_sync(0.8)  # connection refused for a while
    time.sleep(1.0)
    fake.fail_next(500, count=2)
    _wait(lambda: fake.pending_faults() == 0, "last 500s consumed")


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_metrics_reconcile_after_faults(tmp_path: Path, workers: int) -> None:
    """With ``workers: 2`` the same identities hold on the one /metrics the primary serves for all."""
    seed = random.SystemRandom().randrange(2**32)
    print(f"\nreconcile seed: {seed} workers: {workers}")
    with FakeOpenMeter.in_thread() as fake:
        cfg = collector_config(
            storage=tmp_path / "storage",
            openmeter_url=fake.url,
            receiver_port=free_port(),
            admin_port=free_port(),
            exporter={"timeout": 0.5, "batch": {"max_events": 20}, "max_in_flight": 2},
            receiver={"max_events": RECEIVER_MAX_EVENTS},
        )
        cfg["service"]["workers"] = workers
        with CollectorProcess(tmp_path, cfg) as proc:
            proc.start()
            proc.wait_started()
            loadgen = LoadGenerator(proc.ingest_url, seed=seed, clients=3, max_seconds=90, retry_prob=0.3)
            run = loadgen.run_id
            # Poison events: ids each client reaches early (ids are contiguous per client).
            poison = {f"{run}-c0-3", f"{run}-c1-40", f"{run}-c2-90", f"{run}-c0-150"}
            fake.reject_ids(poison)
            loadgen.start()
            try:
                expected_refused = _send_invalid(proc.ingest_url)
                _run_fault_script(fake, poison)
                time.sleep(0.3)  # a little clean traffic after the last fault
            finally:
                loadgen.stop()

            fake.clear_faults()
            fake.reject_ids(poison)  # clear_faults() dropped them; keep poison poisonous
            proc.wait_drained(timeout=60, settle=0.5)
            samples = proc.metrics()
            dead = _dead_lettered(proc)
            doc = proc.health() or {}
            health = proc.exporter_health()
            worker_health = [w["components"]["exporters"][EXPORTER_ID] for w in doc.get("workers", {}).values()]
            rc = proc.stop()
            assert rc == 0, proc.log_tail()

        arrivals = [(e["source"], e["id"]) for e in fake.arrivals]
        requests = fake.requests

    ledger = loadgen.ledger
    acked = ledger.acked_ids()
    arrived = set(arrivals)
    statuses: dict[int, int] = {}
    for r in requests:
        statuses[r.status] = statuses.get(r.status, 0) + 1

    rx = {"receiver": "http"}
    ex = {"exporter": EXPORTER_ID}
    received = metric_sum(samples, "collector_receiver_received_events_total", **rx)
    accepted = metric_sum(samples, "collector_receiver_accepted_events_total", **rx)
    refused = metric_sum(samples, "collector_receiver_refused_events_total", **rx)
    refused_invalid = metric_sum(samples, "collector_receiver_refused_events_total", reason="invalid", **rx)
    refused_large = metric_sum(samples, "collector_receiver_refused_events_total", reason="too_large", **rx)
    enqueued = metric_sum(samples, "collector_exporter_enqueued_events_total", **ex)
    delivered = metric_sum(samples, "collector_exporter_delivered_events_total", **ex)
    dead_metric = metric_sum(samples, "collector_exporter_dead_lettered_events_total", **ex)
    queued = metric_sum(samples, "collector_queue_events", **ex)
    retries = {
        k.split('class="')[1].split('"')[0]: v
        for k, v in samples.items()
        if k.startswith("collector_exporter_retries_total{")
    }
    summary = {
        "requests": ledger.requests,
        "acked_ids": len(acked),
        "received": received,
        "accepted": accepted,
        "refused": refused,
        "enqueued": enqueued,
        "delivered": delivered,
        "dead_lettered": dead_metric,
        "queue_events": queued,
        "arrived_ids": len(arrived),
        "arrivals": len(arrivals),
        "dlq_ids": len(dead),
        "fake_statuses": statuses,
        "retries_by_class": retries,
        "loadgen_outcomes": dict(ledger.outcomes),
    }
    print(f"reconcile: {summary}")

    # The faults really happened.
    for status in (500, 503, 429, 401, 400):
        assert statuses.get(status, 0) > 0, f"fault {status} never reached the sender: {statuses}"
    assert retries.get("timeout", 0) > 0, retries
    assert retries.get("network", 0) > 0, retries
    assert health is not None and not health["paused"]
    assert not any(h["paused"] for h in worker_health)
    assert len(worker_health) == (workers if workers > 1 else 0)

    # Receiver identity, and the refusals are the ones we caused.
    assert received == accepted + refused, summary
    assert refused_invalid == expected_refused["invalid"], summary
    assert refused_large == expected_refused["too_large"], summary
    assert accepted == len(acked), "accepted_events should count each 2xx-acknowledged event once"

    # Exporter identity.
    assert queued == 0
    assert enqueued == accepted, "one pipeline, one exporter: every accepted event is enqueued once"
    assert enqueued == delivered + dead_metric + queued, summary

    # What arrived is what was accepted, minus what was dead-lettered.
    assert dead == poison_keys(poison, acked), "only the poison events are dead letters"
    assert dead_metric == len(dead)
    assert arrived == acked - dead, {
        "missing": sorted(acked - dead - arrived)[:10],
        "unexpected": sorted(arrived - (acked - dead))[:10],
    }


def poison_keys(poison: set[str], acked: set[Key]) -> set[Key]:
    return {k for k in acked if k[1] in poison}
