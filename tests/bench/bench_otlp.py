"""Benchmark: OTLP/gRPC log records per second, acknowledged only after the commit.

    .venv/bin/python tests/bench/bench_otlp.py [--duration 5] [--rounds 2] [--concurrency 8] [--batch 512]

* collector: ``collector run -c cfg.yaml`` in a subprocess: the ``otlp``
  receiver (gRPC only), a ``mapping`` processor that makes one usage event per
  log record (stable id, subject, data), the durable queue with
  ``durability: full`` and the ``debug`` exporter writing a summary per batch
  to /dev/null (so delivery runs, as it would in production, but costs little).
  An OK answer means the records' events are committed (fsync'd).
* baseline, in the same run: a ``grpc.aio`` server in a subprocess that only
  decodes the ExportLogsServiceRequest (protobuf) and answers.

* with ``--free-conversion``, also a what-if collector that converts each of the
  few payloads into records once and reuses them (``FREE_CONVERSION``): what the
  rest of the path allows, i.e. the most that a faster converter could give.

Both are driven by the same load: ``--concurrency`` Export calls in flight on
one gRPC channel from this process, ``--batch`` log records per request (the
SDK's BatchLogRecordProcessor exports up to 512), requests cycling over a few
pre-encoded payloads.  Records are counted inside a window after a warm-up;
rounds are interleaved (baseline, collector, baseline, ...) and the median is
kept.  Needs the otlp plugin (``make install``).  Takes about 30 s; every
process binds 127.0.0.1 and is ended by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import PYTHON, Procs, collector_exe, free_port, http_get, machine_busy_pct, tree_cpu_by_process, wait_port

EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"

MAPPING = """\
{"specversion": "1.0", "type": "api-request", "source": "otlp-logs/" + coalesce(this.resource["service.name"], "x"),
 "id": coalesce(this.attributes["request.id"], stable_id(this.time, this.body)),
 "time": coalesce(this.time, this.observed_time), "subject": this.attributes["customer.id"],
 "data": {"route": this.attributes["http.route"], "duration_ms": this.attributes["duration_ms"]}}"""

CONFIG = """\
receivers:
  otlp:
    grpc: {{endpoint: "127.0.0.1:{grpc_port}"}}
    http: null
    # Logs only; without the metrics' per-series state the receiver may run in every worker (--workers).
    metrics: {{cumulative_to_delta: false}}
processors:
  mapping:
    expression: |
{mapping}
exporters:
  debug:
    path: /dev/null
    verbosity: basic
    queue: {{durability: full}}
storage:
  directory: {storage}
service:
  workers: {workers}
  telemetry: {{endpoint: "127.0.0.1:{admin_port}", log_level: warning, log_format: text}}
  pipelines:
    logs: {{receivers: [otlp], processors: [mapping], exporters: [debug]}}
"""


# `--free-conversion`: a what-if, not the collector as shipped.  Put on the collector's PYTHONPATH, this
# makes the otlp receiver convert each of the bench's few payloads into records once and hand out copies
# of that list afterwards, so the conversion costs next to nothing and the figure is what the rest of
# the path (gRPC, mapping, checks, commit, delivery) allows: the most a faster converter could give.
FREE_CONVERSION = """\
import collector_plugin_otlp.receiver as receiver

_convert = receiver.log_records
_seen = {}


def _reused(message):
    records = message.resource_logs[0].scope_logs[0].log_records
    key = (records[0].time_unix_nano, len(records)) if records else None
    got = _seen.get(key)
    if got is None:
        got = _seen[key] = _convert(message)
    return list(got)


receiver.log_records = _reused
"""


def payloads(batch: int, count: int = 8) -> list[bytes]:
    """``count`` different ExportLogsServiceRequests of ``batch`` log records each (as an SDK sends them)."""
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
    from opentelemetry.proto.common.v1 import common_pb2
    from opentelemetry.proto.logs.v1 import logs_pb2
    from opentelemetry.proto.resource.v1 import resource_pb2

    def kv(key: str, value: Any) -> common_pb2.KeyValue:
        v = common_pb2.AnyValue(int_value=value) if isinstance(value, int) else common_pb2.AnyValue(string_value=value)
        return common_pb2.KeyValue(key=key, value=v)

    now = time.time_ns()
    out = []
    for p in range(count):
        records = [
            logs_pb2.LogRecord(
                time_unix_nano=now + (p * batch + i) * 1000,
                observed_time_unix_nano=now + (p * batch + i) * 1000,
                severity_number=9,
                severity_text="INFO",
                body=common_pb2.AnyValue(string_value=f"GET /v1/items/{i} 200"),
                attributes=[
                    kv("customer.id", f"customer-{i % 50}"),
                    kv("request.id", f"req-{p}-{i}"),
                    kv("http.route", "/v1/items/{id}"),
                    kv("duration_ms", i % 300),
                ],
                trace_id=(p * batch + i).to_bytes(16, "big"),
                span_id=(i + 1).to_bytes(8, "big"),
            )
            for i in range(batch)
        ]
        request = logs_service_pb2.ExportLogsServiceRequest(
            resource_logs=[
                logs_pb2.ResourceLogs(
                    resource=resource_pb2.Resource(
                        attributes=[kv("service.name", "api"), kv("service.instance.id", "pod-1")]
                    ),
                    scope_logs=[
                        logs_pb2.ScopeLogs(scope=common_pb2.InstrumentationScope(name="app"), log_records=records)
                    ],
                )
            ]
        )
        out.append(request.SerializeToString())
    return out


# -- the baseline server (runs as `bench_otlp.py --baseline-server PORT`) ---------------------------


async def baseline_server(port: int) -> None:
    import grpc
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    answer = logs_service_pb2.ExportLogsServiceResponse().SerializeToString()

    async def export(request: bytes, context: Any) -> bytes:
        message = logs_service_pb2.ExportLogsServiceRequest()
        message.ParseFromString(request)  # decode, as the receiver must, and nothing else
        return answer

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "opentelemetry.proto.collector.logs.v1.LogsService",
                {"Export": grpc.unary_unary_rpc_method_handler(export)},
            )
        ]
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# -- where a record's CPU goes, stage by stage (in this process) -------------------------------------


def breakdown(bodies: list[bytes], repeat: int = 20) -> dict[str, float]:
    """Microseconds per log record of each step the collector's main thread takes, timed alone here.

    The steps are the receiver's own functions, run in order on the same payloads: protobuf decode,
    the records (:func:`collector_plugin_otlp.records.log_records`), the bench's mapping, the mapping
    processor's value check, the debug exporter's event rules, and the queue's JSON encoding; then the
    sender's JSON decoding of what was stored.  What the whole collector spends beyond their sum is the
    rest: gRPC, the pipeline's coroutines, the commit, delivery, and the threads handing work over.
    """
    import orjson
    from collector_plugin_otlp.records import log_records
    from opentelemetry.proto.collector.logs.v1 import logs_service_pb2

    from collector.components import Meta
    from collector.events import validate_cloudevents, value_errors
    from collector.functions import builtin_functions
    from collector.mapping import compile_expression

    mapping = compile_expression(MAPPING, builtin_functions(), path="bench").function
    meta = Meta(receiver="otlp", extra={"signal": "log", "transport": "grpc"})
    parse = logs_service_pb2.ExportLogsServiceRequest.FromString
    messages = [parse(b) for b in bodies]
    records = [log_records(m) for m in messages]
    events = [[mapping(r, meta) for r in rs] for rs in records]
    stored = [orjson.dumps(e) for e in events]
    steps: dict[str, Any] = {
        "protobuf decode": lambda i: parse(bodies[i]),
        "records (log_records)": lambda i: log_records(messages[i]),
        "mapping expression": lambda i: [mapping(r, meta) for r in records[i]],
        "mapping value check": lambda i: [value_errors(e, j) for j, e in enumerate(events[i])],
        "event rules (CloudEvents)": lambda i: validate_cloudevents(events[i]),
        "queue encode (orjson)": lambda i: orjson.dumps(events[i]),
        "sender decode (orjson)": lambda i: orjson.loads(stored[i]),
    }
    count = sum(len(r) for r in records)
    out: dict[str, float] = {}
    for name, step in steps.items():
        best = float("inf")
        for _ in range(3):  # best of three: the least disturbed by the rest of the machine
            started = time.perf_counter()
            for _ in range(repeat):
                for i in range(len(bodies)):
                    step(i)
            best = min(best, time.perf_counter() - started)
        out[name] = round(best / (repeat * count) * 1e6, 2)
    return out


# -- the load ----------------------------------------------------------------------------------------


async def load(
    port: int, bodies: list[bytes], batch: int, concurrency: int, warmup: float, duration: float, channels: int = 1
) -> dict:
    """``concurrency`` Export calls in flight, spread over ``channels`` gRPC connections (several let the
    kernel spread them over worker processes: each connection goes to one)."""
    import grpc

    acked = 0
    calls = 0
    errors: dict[str, int] = {}
    latencies: list[float] = []
    measuring = False
    stop = False
    opened = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}",
            # its own connection per channel (grpc shares subchannels across channels by default)
            options=[("grpc.max_send_message_length", 64 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)],
        )
        for _ in range(max(1, channels))
    ]
    try:
        calls_by_channel = [c.unary_unary(EXPORT, request_serializer=None, response_deserializer=None) for c in opened]
        for channel in opened:
            await channel.channel_ready()

        async def worker(n: int) -> None:
            nonlocal acked, calls
            i = n
            call = calls_by_channel[n % len(calls_by_channel)]
            while not stop:
                t0 = time.perf_counter()
                try:
                    await call(bodies[i % len(bodies)], timeout=30)
                except grpc.aio.AioRpcError as exc:
                    errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                    await asyncio.sleep(0.05)
                    continue
                finally:
                    i += 1
                if measuring:
                    acked += batch
                    calls += 1
                    latencies.append(time.perf_counter() - t0)

        tasks = [asyncio.create_task(worker(n)) for n in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring = True
        started = time.perf_counter()
        await asyncio.sleep(duration)
        measuring = False
        elapsed = time.perf_counter() - started
        stop = True
        await asyncio.gather(*tasks)
    finally:
        for channel in opened:
            await channel.close()
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3, 1) if latencies else 0.0

    return {
        "records_per_s": acked / elapsed,
        "requests": calls,
        "latency_ms": {"p50": pct(0.5), "p99": pct(0.99)},
        "errors": errors,
    }


def measure(procs: Procs, argv: list[str], name: str, port: int, ready_port: int, args: argparse.Namespace,
            bodies: list[bytes], env: dict[str, str] | None = None) -> dict:  # fmt: skip
    proc = procs.start(name, argv, env=env)
    try:
        wait_port(ready_port, 30, proc)
        wait_port(port, 30, proc)
        cpu0 = tree_cpu_by_process(proc.pid)  # with service.workers, the workers take the records in
        result = asyncio.run(
            load(port, bodies, args.batch, args.concurrency, args.warmup, args.duration, args.channels)
        )
        by_process = {p: s - cpu0.get(p, 0.0) for p, s in tree_cpu_by_process(proc.pid).items()}
        cpu = sum(by_process.values())
        result["server_cpu_pct"] = round(cpu / (args.warmup + args.duration) * 100, 1)
        # Each process's share (the primary first): shows whether the kernel spread the connections over the workers.
        result["cpu_pct_by_process"] = [
            round(by_process[p] / (args.warmup + args.duration) * 100, 1) for p in sorted(by_process)
        ]
        # The load ran through warm-up and window at about the same rate: CPU over both, per record.
        handled = result["records_per_s"] * (args.warmup + args.duration)
        result["server_cpu_us_per_record"] = round(cpu / handled * 1e6, 2) if handled else None
        if name.startswith(("collector", "free-conversion")):
            metrics = http_get(f"http://127.0.0.1:{ready_port}/metrics").decode()
            enqueued = sum(
                float(line.rsplit(" ", 1)[1])
                for line in metrics.splitlines()
                if line.startswith("collector_exporter_enqueued_events_total")
            )
            result["enqueued_events"] = int(enqueued)
    finally:
        procs.stop(proc)
    return result


def run(args: argparse.Namespace) -> dict:
    bodies = payloads(args.batch)
    rounds: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="collector-bench-otlp-") as tmp, Procs(Path(tmp)) as procs:
        work = Path(tmp)
        env = None
        if args.free_conversion:
            (work / "free").mkdir()
            (work / "free" / "sitecustomize.py").write_text(FREE_CONVERSION, encoding="utf-8")
            path = os.environ.get("PYTHONPATH")
            env = {**os.environ, "PYTHONPATH": str(work / "free") + (os.pathsep + path if path else "")}
        for r in range(args.rounds):
            print(f"otlp round {r + 1}/{args.rounds} ...", file=sys.stderr, flush=True)
            one: dict[str, Any] = {"background_busy_pct": machine_busy_pct(0.5)}
            port = free_port()
            server = [PYTHON, str(Path(__file__).resolve()), "--baseline-server", str(port)]
            one["baseline"] = measure(procs, server, f"baseline-{r}", port, port, args, bodies)
            one["collector"] = measure_collector(procs, work, f"collector-{r}", args, bodies)
            if env is not None:
                one["free_conversion"] = measure_collector(procs, work, f"free-conversion-{r}", args, bodies, env)
            rounds.append(one)
    return {"rounds": rounds}


def measure_collector(procs: Procs, work: Path, name: str, args: argparse.Namespace, bodies: list[bytes],
                      env: dict[str, str] | None = None) -> dict:  # fmt: skip
    grpc_port, admin_port = free_port(), free_port()
    config = work / f"{name}.yaml"
    mapping = "\n".join("      " + line for line in MAPPING.splitlines())
    config.write_text(
        CONFIG.format(
            grpc_port=grpc_port, admin_port=admin_port, storage=work / f"data-{name}", mapping=mapping,
            workers=args.workers,
        ),
        encoding="utf-8",
    )  # fmt: skip
    argv = [*collector_exe(), "run", "-c", str(config)]
    return measure(procs, argv, name, grpc_port, admin_port, args, bodies, env)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0, help="seconds in each measuring window")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each window")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median kept)")
    p.add_argument("--concurrency", type=int, default=8, help="Export calls in flight")
    p.add_argument("--batch", type=int, default=512, help="log records per request")
    p.add_argument("--channels", type=int, default=1, help="gRPC connections the calls are spread over")
    p.add_argument("--workers", type=int, default=1, help="service.workers of the collector")
    p.add_argument("--breakdown", action="store_true", help="also time each step of a record alone, in this process")
    p.add_argument(
        "--free-conversion",
        action="store_true",
        help="also run a what-if collector that converts each payload to records only once (an upper bound)",
    )
    args = p.parse_args([] if argv is None else argv)
    started = time.monotonic()
    detail = run(args)
    steps = breakdown(payloads(args.batch)) if args.breakdown else None
    base = statistics.median(r["baseline"]["records_per_s"] for r in detail["rounds"])
    rate = statistics.median(r["collector"]["records_per_s"] for r in detail["rounds"])
    result = {
        "otlp_grpc_log_records_per_s": round(rate),
        "baseline_decode_only_records_per_s": round(base),
        "ratio": round(rate / base, 3) if base else 0.0,
        "batch": args.batch,
        "concurrency": args.concurrency,
        "channels": args.channels,
        "workers": args.workers,
        "elapsed_s": round(time.monotonic() - started, 1),
        "rounds": detail["rounds"],
    }
    if args.free_conversion:
        free = statistics.median(r["free_conversion"]["records_per_s"] for r in detail["rounds"])
        result["free_conversion_records_per_s"] = round(free)
        result["free_conversion_ratio"] = round(free / base, 3) if base else 0.0
        result["free_conversion_cpu_us_per_record"] = statistics.median(
            r["free_conversion"]["server_cpu_us_per_record"] or 0.0 for r in detail["rounds"]
        )
    cpu_per_record = statistics.median(r["collector"]["server_cpu_us_per_record"] or 0.0 for r in detail["rounds"])
    result["collector_cpu_us_per_record"] = round(cpu_per_record, 2)
    if steps is not None:
        result["breakdown_us_per_record"] = steps
    print(f"collector, OTLP/gRPC logs, ack after commit (durability full): {rate:,.0f} records/s")
    print(
        f"baseline, grpc.aio server that only decodes the request:    {base:,.0f} records/s  -> ratio {rate / base:.3f}"
    )
    for i, r in enumerate(detail["rounds"], 1):
        c, b = r["collector"], r["baseline"]
        print(
            f"  round {i} (background load {r['background_busy_pct']}%): collector {c['records_per_s']:,.0f}/s "
            f"p50 {c['latency_ms']['p50']} ms p99 {c['latency_ms']['p99']} ms CPU {c['server_cpu_pct']}% "
            f"{'(by process ' + ' + '.join(map(str, c['cpu_pct_by_process'])) + ') ' if args.workers > 1 else ''}"
            f"errors {c['errors']} enqueued {c.get('enqueued_events')}; baseline {b['records_per_s']:,.0f}/s "
            f"p50 {b['latency_ms']['p50']} ms CPU {b['server_cpu_pct']}%"
        )
    print(f"collector CPU per record (all threads and processes): {cpu_per_record:.2f} us")
    if args.free_conversion:
        print(
            f"what-if, conversion to records done once per payload (an upper bound for a faster converter): "
            f"{result['free_conversion_records_per_s']:,} records/s -> ratio {result['free_conversion_ratio']:.3f}, "
            f"{result['free_conversion_cpu_us_per_record']:.2f} us CPU per record"
        )
    if steps is not None:
        print("each step alone, us per record (best of 3, in this process):")
        for name, us in steps.items():
            print(f"  {name:<50} {us:>6.2f}")
        print(f"  {'sum of the steps':<50} {sum(steps.values()):>6.2f}")
        rest = cpu_per_record - sum(steps.values())
        print(f"  {'rest (gRPC, pipeline, commit, delivery, threads)':<50} {rest:>6.2f}")
    print(
        f"({args.batch} records per request, {args.concurrency} in flight on {args.channels} connection(s), "
        f"workers: {args.workers}; {result['elapsed_s']} s)"
    )
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--baseline-server":
        asyncio.run(baseline_server(int(sys.argv[2])))
    else:
        main(sys.argv[1:])
