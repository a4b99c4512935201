"""Ingest benchmarks: the collector beside its baselines, measured in one run.

    python tests/bench/bench_ingest.py [--duration 5] [--connections 64]

* baseline (single events): tests/bench/baseline_server.py, a minimal aiohttp
  handler that reads the body and answers 204, driven by loadgen.py;
* baseline (batches): plain sqlite3, WAL, ``synchronous=FULL``, 100 rows per
  commit, rows/s (the same as tests/bench/bench_queue.py's baseline);
* collector: ``collector run -c cfg.yaml`` (http receiver, durable queue with
  ``durability: full``, openmeter exporter to tests/bench/sink.py), driven by
  the same load generator with one event per request, then 100 per request.
  A 2xx means the events are committed (fsync'd): the collector answers only
  after the group commit that holds them.

Each figure is counted inside a window after a warm-up; the collector's CPU
time and peak RSS over the window are read from /proc.  After the load the
bench waits until the sink holds every acknowledged event (nothing lost, and
delivery keeps up) and reports how long that took.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from harness import (
    BENCH_DIR,
    PYTHON,
    Collector,
    Procs,
    SinkProc,
    cpu_seconds,
    free_port,
    machine_cpu_seconds,
    rss_mib,
    run_loadgen,
    tree_cpu_seconds,
)
from harness import wait_port as _wait_port
from loadgen import event_template

BATCH = 100


def sqlite_baseline(directory: Path, rows: int = 100_000) -> dict[str, Any]:
    """Plain sqlite3: batched inserts of 100 rows per commit, WAL + synchronous=FULL."""
    path = directory / "baseline.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (_id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB)")
    payloads = [(orjson.dumps(event_template("base", i)),) for i in range(BATCH)]
    commits = rows // BATCH
    started = time.perf_counter()
    for _ in range(commits):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (data) VALUES (?)", payloads)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    return {"rows_per_s": commits * BATCH / elapsed, "rows": commits * BATCH, "commits_per_s": commits / elapsed}


def _load(
    url: str,
    pid: int,
    *,
    connections: int,
    events: int,
    warmup: float,
    duration: float,
    helper_pids: tuple[int, ...] = (),
) -> dict[str, Any]:
    """Drive ``url``; sample the server's CPU and RSS, and the CPU others took meanwhile.

    ``foreign_cpu_pct`` is the machine's busy CPU during the load minus the
    server's, the load generator's and the helpers' (the sink): what other
    work on the machine took, in % of one core.  Above ~20 the figure is noisy.
    """
    helpers0 = sum(cpu_seconds(p) for p in helper_pids)
    busy0, _ = machine_cpu_seconds()
    cpu0, t0 = tree_cpu_seconds(pid), time.monotonic()
    result = run_loadgen(
        url,
        timeout=warmup + duration + 60,
        connections=connections,
        events_per_request=events,
        warmup=warmup,
        duration=duration,
        cpu_pid=pid,
    )
    elapsed = time.monotonic() - t0
    server_cpu = tree_cpu_seconds(pid) - cpu0
    helpers_cpu = sum(cpu_seconds(p) for p in helper_pids) - helpers0
    others = machine_cpu_seconds()[0] - busy0 - server_cpu - helpers_cpu - result["loadgen_cpu_s"]
    result["server_cpu_pct"] = round(server_cpu / elapsed * 100, 1)
    result["foreign_cpu_pct"] = round(max(0.0, others) / elapsed * 100, 1)
    result["server_rss_mib"], result["server_peak_rss_mib"] = (round(v, 1) for v in rss_mib(pid))
    return result


def aiohttp_baseline(
    procs: Procs, *, connections: int, warmup: float, duration: float, events: int = 1
) -> dict[str, Any]:
    port = free_port()
    proc = procs.start("baseline", [PYTHON, str(BENCH_DIR / "baseline_server.py"), "--port", str(port)])
    try:
        _wait_port(port, 30, proc)
        return _load(
            f"http://127.0.0.1:{port}/api/v1/events",
            proc.pid,
            connections=connections,
            events=events,
            warmup=warmup,
            duration=duration,
        )
    finally:
        procs.stop(proc)


def wait_delivered(collector: Collector, sink: SinkProc, timeout: float) -> dict[str, Any]:
    """Wait until the sink holds everything the collector enqueued and its queue is empty."""
    started = time.monotonic()
    while True:
        m = collector.metrics()
        c = sink.count()
        done = m.get("queued", 1) == 0 and c["unique"] >= m.get("enqueued", 0)
        if done or time.monotonic() - started > timeout:
            return {
                "all_delivered": bool(done),
                "catch_up_s": round(time.monotonic() - started, 2),
                "enqueued": int(m.get("enqueued", 0)),
                "sink_unique": c["unique"],
                "sink_events": c["events"],
            }
        time.sleep(0.1)


def collector_ingest(
    procs: Procs,
    workdir: Path,
    *,
    connections: int,
    warmup: float,
    duration: float,
    batch_sizes: tuple[int, ...] = (1, BATCH),
    env: dict[str, str] | None = None,
    exe: list[str] | None = None,
    name: str = "collector",
    workers: int | None = None,
    destination_down: bool = False,
) -> dict[str, Any]:
    """One collector (with its sink), loaded with each batch size in turn.

    ``workers``: written as ``service.workers`` into its config; its CPU is
    then the sum over the collector's process tree.  ``destination_down``:
    the sink starts only after every load, so the loads measure intake alone
    (an outage: the sender only retries), then the drain of the backlog.
    """
    sink = SinkProc(procs)
    if not destination_down:
        sink.start()
    collector = Collector(procs, workdir, sink.port, name=name, workers=workers)
    collector.start(env=env, exe=exe)
    out: dict[str, Any] = {}
    try:
        for events in batch_sizes:
            result = _load(
                collector.url,
                collector.pid,
                connections=connections,
                events=events,
                warmup=warmup,
                duration=duration,
                helper_pids=(sink.proc.pid,) if sink.proc is not None else (),
            )
            result["queued_at_end"] = int(collector.metrics().get("queued", -1))
            if not destination_down:
                result["delivery"] = wait_delivered(collector, sink, timeout=60)
            out[f"events_{events}"] = result
        if destination_down:  # the destination is back: everything acknowledged must arrive
            sink.start()
            out["delivery_after_outage"] = wait_delivered(collector, sink, timeout=180)
        out["peak_rss_mib"] = round(rss_mib(collector.pid)[1], 1)
    finally:
        collector.stop()
        sink.stop()
    return out


def print_rounds(rounds: list[dict[str, Any]]) -> None:
    """One line per load: events/s and the server's CPU microseconds per request and per acknowledged event."""
    print(f"{'round':>5}  {'load':<28} {'events/s':>10} {'CPU us/req':>10} {'CPU us/event':>12} {'others %':>8}")
    for i, one in enumerate(rounds, 1):
        if "sqlite" in one:
            print(f"{i:>5}  {'sqlite 100 rows/commit FULL':<28} {one['sqlite']['rows_per_s']:>10,.0f}")
        loads: list[tuple[str, Any]] = [(k, one[k]) for k in ("aiohttp_1", "aiohttp_100") if k in one]
        loads += [(f"collector {k}", v) for k, v in one.get("collector", {}).items() if k.startswith("events_")]
        for label, x in loads:
            per_req, per_event = x.get("server_cpu_us_per_request"), x.get("server_cpu_us_per_event")
            print(
                f"{i:>5}  {label:<28} {x['events_per_s']:>10,.0f} {per_req if per_req is not None else '-':>10} "
                f"{per_event if per_event is not None else '-':>12} {x['foreign_cpu_pct']:>8}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (sqlite, aiohttp x2, collector)")
    p.add_argument("--workers", type=int, default=None, help="write service.workers: N into the collector's config")
    p.add_argument(
        "--destination-down",
        action="store_true",
        help="start the sink only after the collector's loads: intake alone (an outage), then the drain",
    )
    p.add_argument("--only", choices=["baseline", "collector", "sqlite"], default=None)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    load = {"connections": args.connections, "warmup": args.warmup, "duration": args.duration}
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp, Procs(Path(tmp)) as procs:
        for i in range(args.rounds):
            one: dict[str, Any] = {}
            if args.only in (None, "sqlite"):
                one["sqlite"] = sqlite_baseline(Path(tmp))
            if args.only in (None, "baseline"):
                one["aiohttp_1"] = aiohttp_baseline(procs, events=1, **load)
                one["aiohttp_100"] = aiohttp_baseline(procs, events=BATCH, **load)
            if args.only in (None, "collector"):
                one["collector"] = collector_ingest(
                    procs,
                    Path(tmp),
                    name=f"collector-{i}",
                    workers=args.workers,
                    destination_down=args.destination_down,
                    **load,
                )
            rounds.append(one)
    settings = {**load, "rounds": args.rounds, "workers": args.workers, "destination_down": args.destination_down}
    results = {"settings": settings, "rounds": rounds}
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    else:
        print(json.dumps(results, indent=2))
    print_rounds(rounds)
    if args.destination_down:
        for i, one in enumerate(rounds, 1):
            d = one.get("collector", {}).get("delivery_after_outage")
            if d:
                print(
                    f"round {i}: destination down during the loads; afterwards {d['sink_unique']:,} of "
                    f"{d['enqueued']:,} events delivered in {d['catch_up_s']} s (all: {d['all_delivered']})"
                )


if __name__ == "__main__":
    main()
