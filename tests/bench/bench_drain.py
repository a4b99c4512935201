"""Drain after an outage, and RSS against the size of the backlog.

    python tests/bench/bench_drain.py [--backlog 100000]

1. A collector is started whose destination (tests/bench/sink.py) is down:
   nothing listens on the exporter's port, every send is refused and retried.
2. The load generator puts 10,000 events in (100-event requests); once the
   queue holds them all, the collector's RSS is read.  Then up to
   ``--backlog`` events; RSS again.  "Flat" = the second is within 10% of
   the first.
3. The sink is started on the exporter's port.  The drain rate is the
   backlog divided by the time between the first and the last request the
   sink received (its own monotonic clock); the time from the sink's start
   to the first delivery (the sender's retry backoff, capped at 0.5 s in the
   bench config) and to an empty queue are reported beside it.
4. The sink's set of ids must hold every event once (nothing lost).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import Collector, Procs, SinkProc, cpu_seconds, free_port, rss_mib, run_loadgen

BATCH = 100
FIRST_STEP = 10_000


def _fill(collector: Collector, target: int, already: int, connections: int, batch: int = BATCH) -> dict[str, Any]:
    """Add events, ``batch`` per request, until the queue holds ``target``; the ingest rate."""
    requests = (target - already) // batch
    result = run_loadgen(
        collector.url,
        timeout=180,
        connections=connections,
        events_per_request=batch,
        requests=requests,
        max_time=150,
    )
    deadline = time.monotonic() + 30
    while collector.metrics().get("queued", 0) < target and time.monotonic() < deadline:
        time.sleep(0.05)
    return result


def _settled_rss(pid: int) -> float:
    """RSS after a short settle, the lowest of a few samples (what stays resident)."""
    samples = []
    for _ in range(5):
        time.sleep(0.2)
        samples.append(rss_mib(pid)[0])
    return round(min(samples), 1)


def drain(
    procs: Procs,
    workdir: Path,
    *,
    backlog: int,
    connections: int = 16,
    env: dict[str, str] | None = None,
    events_per_request: int = BATCH,
    max_events: int | None = None,
) -> dict[str, Any]:
    """``events_per_request``: how the backlog was sent (each group commit of the queue holds what
    arrived together); ``max_events``: the exporter's ``batch.max_events`` (events per request to the sink)."""
    sink = SinkProc(procs, port=free_port())  # the exporter's destination, down for now
    collector = Collector(procs, workdir, sink.port, name="collector-drain", max_events=max_events)
    collector.start(env=env)
    out: dict[str, Any] = {"backlog": backlog}
    try:
        out["rss_empty_mib"] = _settled_rss(collector.pid)
        fill1 = _fill(collector, FIRST_STEP, 0, connections, events_per_request)
        out["rss_10k_mib"] = _settled_rss(collector.pid)
        fill2 = _fill(collector, backlog, FIRST_STEP, connections, events_per_request)
        out["rss_backlog_mib"] = _settled_rss(collector.pid)
        out["peak_rss_fill_mib"] = round(rss_mib(collector.pid)[1], 1)
        out["queue_bytes"] = int(collector.metrics().get("queued_bytes", 0))
        out["queued_before_drain"] = int(collector.metrics().get("queued", 0))
        requests_ok = fill1["total_requests_ok"] + fill2["total_requests_ok"]
        sent = requests_ok * events_per_request
        out["fill_events_per_s_no_delivery"] = round(sent / (fill1["elapsed_s"] + fill2["elapsed_s"]), 1)
        out["fill_statuses"] = [fill1["statuses"], fill2["statuses"]]

        cpu0 = cpu_seconds(collector.pid)
        started = time.monotonic()
        sink.start()
        deadline = started + 120
        while time.monotonic() < deadline:
            count = sink.count()
            if count["unique"] >= sent and collector.metrics().get("queued", 1) == 0:
                break
            time.sleep(0.05)
        empty_at = time.monotonic()
        count = sink.count()
        out["drained_events"] = count["events"]
        out["drained_unique"] = count["unique"]
        out["all_delivered"] = count["unique"] >= sent
        out["sink_requests"] = count["requests"]
        if count["first"] is not None and count["last"] is not None and count["last"] > count["first"]:
            out["drain_events_per_s"] = round(count["unique"] / (count["last"] - count["first"]), 1)
            out["first_delivery_after_s"] = round(count["first"] - started, 3)
        else:
            out["drain_events_per_s"] = 0.0
        out["empty_after_s"] = round(empty_at - started, 3)
        drain_cpu = cpu_seconds(collector.pid) - cpu0
        out["drain_collector_cpu_pct"] = round(drain_cpu / max(1e-9, empty_at - started) * 100, 1)
        # from the sink's start to an empty queue: the retry backoff's idle wait costs no CPU
        out["drain_cpu_us_per_event"] = round(drain_cpu / max(1, count["unique"]) * 1e6, 2)
        out["peak_rss_mib"] = round(rss_mib(collector.pid)[1], 1)
    finally:
        collector.stop()
        sink.stop()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backlog", type=int, default=100_000)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--events-per-request", type=int, default=BATCH, help="events per request of the backlog")
    p.add_argument("--max-events", type=int, default=None, help="the exporter's batch.max_events (default 100)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp, Procs(Path(tmp)) as procs:
        result = drain(
            procs,
            Path(tmp),
            backlog=args.backlog,
            connections=args.connections,
            events_per_request=args.events_per_request,
            max_events=args.max_events,
        )
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
