"""``make bench``: every benchmark, each beside a baseline measured in the same run.

    .venv/bin/python tests/bench/run_all.py [--json PATH] [--rounds 2] [--duration 5] [--quick]

Prints a table (collector figure, baseline, ratio, target, met?) followed by
the details, and writes everything as JSON (default
``/tmp/collector-bench/results.json``).  See tests/bench/README.md for what
each number means and how it is measured.  Takes about four minutes (the
kubernetes, runai and s3 benchmarks included); every load is bounded in count and
time, every process binds 127.0.0.1 and is ended by its PID.

Ingest is measured in ``--rounds`` interleaved rounds (baseline, collector,
baseline, collector...) and the median of each is kept, so a noisy
neighbour moment hits both sides rather than one.  The exit status is 0
whatever the figures: a benchmark reports, it does not gate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_cli import cli
from bench_drain import drain
from bench_ingest import aiohttp_baseline, collector_ingest, sqlite_baseline
from harness import Procs, machine_busy_pct

TARGETS = {
    "single_ingest_ratio": 0.6,
    "batch_ingest_ratio": 0.6,  # issue 14 (was 0.4)
    "otlp_ratio": 0.15,
    "drain_ratio": 3.0,
    "peak_rss_mib": 150.0,
    "backlog_rss_growth": 1.10,
    "help_s": 0.5,
}


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    env = None
    if args.pythonpath:  # measure a scratch copy of the package instead of the installed one
        env = {**os.environ, "PYTHONPATH": args.pythonpath}
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "pythonpath": args.pythonpath,
        },
        "settings": {
            "connections": args.connections,
            "warmup_s": args.warmup,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "backlog": args.backlog,
        },
    }
    with tempfile.TemporaryDirectory(prefix="collector-bench-") as tmp, Procs(Path(tmp)) as procs:
        work = Path(tmp)
        print("cli ...", file=sys.stderr, flush=True)
        results["cli"] = cli(args.repeat)

        rounds: list[dict[str, Any]] = []
        for i in range(args.rounds):
            print(f"ingest round {i + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
            one: dict[str, Any] = {"background_busy_pct": machine_busy_pct(1.0), "sqlite": sqlite_baseline(work)}
            load = {"connections": args.connections, "warmup": args.warmup, "duration": args.duration}
            one["aiohttp_1"] = aiohttp_baseline(procs, events=1, **load)
            one["aiohttp_100"] = aiohttp_baseline(procs, events=100, **load)
            one["collector"] = collector_ingest(procs, work, env=env, name=f"collector-{i}", **load)
            rounds.append(one)
        results["ingest_rounds"] = rounds

        print("drain ...", file=sys.stderr, flush=True)
        results["drain_background_busy_pct"] = machine_busy_pct(1.0)
        results["drain"] = drain(procs, work, backlog=args.backlog, env=env)

    print("mapping ...", file=sys.stderr, flush=True)
    import bench_mapping

    results["mapping"] = bench_mapping.main()
    try:
        import bench_otlp
    except ImportError as exc:  # the otlp plugin (grpc) is not installed
        results["otlp"] = {"skipped": str(exc)}
    else:
        print("otlp ...", file=sys.stderr, flush=True)
        otlp_args = ["--duration", str(args.duration), "--warmup", str(args.warmup), "--rounds", str(args.rounds)]
        results["otlp"] = bench_otlp.main(otlp_args)
    for name in PLUGIN_BENCHES:
        results[name] = plugin_bench(name, args)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["summary"] = summarise(results)
    return results


#: The plugins' benchmarks: name -> (script, the arguments of its quick run). Each runs in its own process
#: (it starts its fake server or moto in yet another), and its table is kept.
PLUGIN_BENCHES = {
    "kubernetes": ("plugins/kubernetes/tests/bench_pods.py", ["--pods", "2000"]),
    "runai": ("plugins/runai/tests/bench_runai.py", ["--quick"]),
    "s3": ("plugins/s3/tests/bench_s3.py", ["--quick"]),
}


def plugin_bench(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the plugin benchmark ``name`` (PLUGIN_BENCHES); its JSON and printed table, or why it was skipped."""
    relative, quick = PLUGIN_BENCHES[name]
    script = Path(__file__).resolve().parents[2] / relative
    if not script.exists():
        return {"skipped": f"{script} not found"}
    print(f"{name} ...", file=sys.stderr, flush=True)
    out_json = args.json.parent / f"{name}.json"
    cmd = [sys.executable, str(script), "--json", str(out_json), *(quick if args.quick else [])]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": f"{script.name} ran past 600 s"}
    if done.returncode != 0:
        return {"skipped": f"{script.name} failed ({done.returncode}): {done.stderr[-2000:]}"}
    return {"table": done.stdout, **json.loads(out_json.read_text(encoding="utf-8"))}


def summarise(r: dict[str, Any]) -> list[dict[str, Any]]:
    rounds = r["ingest_rounds"]
    base1 = _median([x["aiohttp_1"]["events_per_s"] for x in rounds])
    base100 = _median([x["aiohttp_100"]["events_per_s"] for x in rounds])
    sqlite_rows = _median([x["sqlite"]["rows_per_s"] for x in rounds])
    col1 = _median([x["collector"]["events_1"]["events_per_s"] for x in rounds])
    col100 = _median([x["collector"]["events_100"]["events_per_s"] for x in rounds])
    peak = max(x["collector"]["peak_rss_mib"] for x in rounds)
    d = r["drain"]
    cli = r["cli"]
    rows: list[dict[str, Any]] = [
        {
            "name": "single-event ingest (events/s)",
            "collector": col1,
            "baseline": base1,
            "baseline_name": "aiohttp 204 handler",
            "ratio": col1 / base1 if base1 else 0.0,
            "target": f">= {TARGETS['single_ingest_ratio']}x",
            "met": base1 > 0 and col1 / base1 >= TARGETS["single_ingest_ratio"],
        },
        {
            "name": "100-event ingest (events/s)",
            "collector": col100,
            "baseline": sqlite_rows,
            "baseline_name": "sqlite 100 rows/commit FULL",
            "ratio": col100 / sqlite_rows if sqlite_rows else 0.0,
            "target": f">= {TARGETS['batch_ingest_ratio']}x",
            "met": sqlite_rows > 0 and col100 / sqlite_rows >= TARGETS["batch_ingest_ratio"],
        },
        {
            "name": "  (same, beside aiohttp with 100-event bodies)",
            "collector": col100,
            "baseline": base100,
            "baseline_name": "aiohttp 204, 100/req",
            "ratio": col100 / base100 if base100 else 0.0,
            "target": "info",
            "met": None,
        },
        *_cpu_rows(rounds),
        {
            "name": f"drain after outage, {d['backlog'] // 1000}k backlog (events/s)",
            "collector": d["drain_events_per_s"],
            "baseline": col1,
            "baseline_name": "collector single-event ingest",
            "ratio": d["drain_events_per_s"] / col1 if col1 else 0.0,
            "target": f">= {TARGETS['drain_ratio']}x",
            "met": bool(d["all_delivered"]) and col1 > 0 and d["drain_events_per_s"] / col1 >= TARGETS["drain_ratio"],
        },
        {
            "name": "peak RSS under ingest load (MiB)",
            "collector": peak,
            "baseline": None,
            "baseline_name": "",
            "ratio": None,
            "target": f"<= {TARGETS['peak_rss_mib']:.0f} MiB",
            "met": peak <= TARGETS["peak_rss_mib"],
        },
        {
            "name": f"RSS with {d['backlog'] // 1000}k queued vs 10k (MiB)",
            "collector": d["rss_backlog_mib"],
            "baseline": d["rss_10k_mib"],
            "baseline_name": "RSS with 10k queued",
            "ratio": d["rss_backlog_mib"] / d["rss_10k_mib"] if d["rss_10k_mib"] else 0.0,
            "target": f"<= {TARGETS['backlog_rss_growth']}x (flat)",
            "met": d["rss_10k_mib"] > 0 and d["rss_backlog_mib"] / d["rss_10k_mib"] <= TARGETS["backlog_rss_growth"],
        },
        {
            "name": "mapping processor, access-log (records/s)",
            "collector": r["mapping"]["mapping_records_per_s"],
            "baseline": r["mapping"]["baseline_python_records_per_s"],
            "baseline_name": "same mapping as plain Python",
            "ratio": r["mapping"]["ratio"],
            "target": ">= 200,000/s",
            "met": r["mapping"]["met"],
        },
        *(
            [
                {
                    "name": "OTLP/gRPC logs, ack after commit (records/s)",
                    "collector": r["otlp"]["otlp_grpc_log_records_per_s"],
                    "baseline": r["otlp"]["baseline_decode_only_records_per_s"],
                    "baseline_name": "grpc.aio decode-only server",
                    "ratio": r["otlp"]["ratio"],
                    "target": f">= {TARGETS['otlp_ratio']}x",
                    "met": r["otlp"]["ratio"] >= TARGETS["otlp_ratio"],
                }
            ]
            if "ratio" in r.get("otlp", {})
            else []
        ),
        {
            "name": "collector --help (s)",
            "collector": cli["help"]["median_s"],
            "baseline": cli["python_pass"]["median_s"],
            "baseline_name": "python -c pass",
            "ratio": cli["help"]["median_s"] / cli["python_pass"]["median_s"],
            "target": f"<= {TARGETS['help_s']} s",
            "met": cli["help"]["median_s"] <= TARGETS["help_s"],
        },
        {
            "name": "collector plugins (s)",
            "collector": cli["plugins"]["median_s"],
            "baseline": cli["python_pass"]["median_s"],
            "baseline_name": "python -c pass",
            "ratio": cli["plugins"]["median_s"] / cli["python_pass"]["median_s"],
            "target": "info",
            "met": None,
        },
    ]
    return rows


def _cpu_rows(rounds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CPU microseconds per acknowledged event (the collector's process tree over the window), beside the bare
    handler's CPU per request of the same load: a figure that does not depend on the machine's size or load."""
    rows = []
    for events, base_key, label in ((1, "aiohttp_1", "1 event/req"), (100, "aiohttp_100", "100 events/req")):
        col = [x["collector"][f"events_{events}"].get("server_cpu_us_per_event") for x in rounds]
        base = [x[base_key].get("server_cpu_us_per_request") for x in rounds]
        if None in col or None in base:
            continue
        col_us, base_us = _median(col), _median(base) / events
        rows.append(
            {
                "name": f"CPU us per acked event, {label}",
                "collector": col_us,
                "baseline": base_us,
                "baseline_name": "aiohttp 204 CPU per request" + (f" / {events}" if events > 1 else ""),
                "ratio": col_us / base_us if base_us else 0.0,
                "target": "info",
                "met": None,
            }
        )
    return rows


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value < 10:
            return f"{value:.3f}"
        return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}"
    return str(value)


def print_table(r: dict[str, Any]) -> None:
    rows = [("measurement", "collector", "baseline", "(baseline is)", "ratio", "target", "met")]
    for s in r["summary"]:
        met = {True: "yes", False: "NO", None: ""}[s["met"]]
        ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f}x"
        rows.append((s["name"], _fmt(s["collector"]), _fmt(s["baseline"]), s["baseline_name"], ratio, s["target"], met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    right = {1, 2, 4}
    line = "  ".join("-" * w for w in widths)
    print(line)
    for n, row in enumerate(rows):
        print(
            "  ".join(
                c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            print(line)
    print(line)


def print_details(r: dict[str, Any]) -> None:
    m = r["machine"]
    print(f"\nmachine: {m['cpus']} CPUs, Python {m['python']}, {m['platform']}; run took {r['elapsed_s']} s")
    s = r["settings"]
    print(
        f"load: {s['connections']} keep-alive connections, warm-up {s['warmup_s']} s, "
        f"window {s['duration_s']} s, {s['rounds']} interleaved round(s), medians above"
    )
    for i, one in enumerate(r["ingest_rounds"], 1):
        c1, c100 = one["collector"]["events_1"], one["collector"]["events_100"]
        a1, a100 = one["aiohttp_1"], one["aiohttp_100"]
        busy = one["background_busy_pct"]
        warn = "  << the machine was busy with other work" if busy > 15 else ""
        print(f"round {i}: background load before the round {busy}% of all CPUs{warn}")
        print(f"  sqlite 100 rows/commit FULL   {one['sqlite']['rows_per_s']:>10,.0f} rows/s")
        for label, x in (
            ("aiohttp 204, 1 event/req  ", a1),
            ("collector,   1 event/req  ", c1),
            ("aiohttp 204, 100 ev/req   ", a100),
            ("collector,   100 ev/req   ", c100),
        ):
            lat = x["latency_ms"]
            extra = ""
            if "delivery" in x:
                dl = x["delivery"]
                extra = (
                    f"; queue at end {x['queued_at_end']:,}, all delivered {dl['all_delivered']}"
                    f" ({dl['sink_unique']:,}/{dl['enqueued']:,}) after {dl['catch_up_s']} s"
                )
            print(
                f"  {label}  {x['events_per_s']:>10,.0f} events/s  p50 {lat['p50']} ms  p99 {lat['p99']} ms  "
                f"server CPU {x['server_cpu_pct']}% ({x.get('server_cpu_us_per_request', '-')} us/req)  "
                f"loadgen CPU {x['loadgen_cpu_s']} s  "
                f"others' CPU {x['foreign_cpu_pct']}%{' (noisy)' if x['foreign_cpu_pct'] > 20 else ''}  "
                f"statuses {x['statuses']}{extra}"
            )
    d = r["drain"]
    print(
        f"drain: backlog {d['backlog']:,} events ({d['queue_bytes'] / 2**20:.1f} MiB queued), filled at "
        f"{d['fill_events_per_s_no_delivery']:,.0f} events/s with the destination down; "
        f"first delivery {d.get('first_delivery_after_s')} s after the sink started, queue empty after "
        f"{d['empty_after_s']} s; {d['drained_unique']:,} unique / {d['drained_events']:,} received "
        f"in {d['sink_requests']:,} requests; collector CPU {d['drain_collector_cpu_pct']}% while draining"
    )
    print(
        f"RSS: empty {d['rss_empty_mib']} MiB, 10k queued {d['rss_10k_mib']} MiB, "
        f"{d['backlog'] // 1000}k queued {d['rss_backlog_mib']} MiB, peak through fill and drain "
        f"{d['peak_rss_mib']} MiB"
    )
    c = r["cli"]
    print(
        f"cli: python -c pass {c['python_pass']['median_s'] * 1e3:.0f} ms, collector --help "
        f"{c['help']['median_s'] * 1e3:.0f} ms, collector plugins {c['plugins']['median_s'] * 1e3:.0f} ms "
        f"(medians of {c['help']['runs']})"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=Path("/tmp/collector-bench/results.json"), help="write results here")
    p.add_argument("--rounds", type=int, default=2, help="interleaved ingest rounds (median kept)")
    p.add_argument("--connections", type=int, default=64, help="load generator connections")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each window")
    p.add_argument("--duration", type=float, default=5.0, help="seconds in each measuring window")
    p.add_argument("--backlog", type=int, default=200_000, help="events queued before the drain")
    p.add_argument("--repeat", type=int, default=7, help="runs of each CLI command")
    p.add_argument("--quick", action="store_true", help="1 round, 2 s windows, 50k backlog (a smoke run)")
    p.add_argument("--pythonpath", default=None, help="run the collector with this PYTHONPATH (a scratch copy)")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup, args.backlog, args.repeat = 1, 2.0, 0.5, 50_000, 3
    results = run(args)
    print_table(results)
    print_details(results)
    for name in PLUGIN_BENCHES:
        found = results[name]
        print("\n" + found["table"] if "table" in found else f"\n{name}: skipped: {found['skipped']}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"\nresults: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
