"""Benchmark of the ``s3`` receiver: records/s from JSON-lines objects (issue 13, point 7).

    .venv/bin/python plugins/s3/tests/bench_s3.py [--objects 200] [--records 1000] [--rounds 2] [--quick]

Not a pytest test (no ``test_`` prefix); ``make bench`` runs it (``--quick``)
through tests/bench/run_all.py.  Every collector figure is printed beside a
baseline measured in the same run against the same objects:

* **baseline**: boto3 as a script would read a bucket -- list the prefix, then
  for each object one after the other ``get_object`` + ``read()`` (+
  ``gzip.decompress``) + ``splitlines`` + ``json.loads`` of every line;
* **collector**: the ``s3`` receiver in a pipeline (``collector.testing``'s
  ``run_pipeline``, the ``memory`` exporter) from the service's start until
  every object is finished and every record committed to the exporter's
  queue (the ``collector_s3_records`` counter), with a memory queue and with
  the durable queue (``durability: full``: the real commit cost).  Records
  carry no ``id``, so the receiver derives each one (``stable_id``) as it does
  for real billing exports; a checkpoint is saved after every batch.

Two processes, so that moto's CPU is not counted as the client's: ``--role
server`` runs moto's S3 server (tests/motoserver.py) and answers ``stats``
(its CPU seconds) and ``quit`` on stdin; this process uploads the objects
(not timed) and runs the baseline and the collector in turn, in
``--rounds`` interleaved rounds, the fastest round of each kept.

Prints a table (figure, collector, baseline, ratio) and writes JSON to
``/tmp/collector-bench/s3.json``.  See tests/bench/README.md for the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_BENCH = Path(__file__).resolve().parents[3] / "tests" / "bench"  # the shared summary table
if str(_BENCH) not in sys.path:
    sys.path.insert(0, str(_BENCH))

from harness import LineServer, cpu_seconds, machine_cpu_seconds  # noqa: E402
from ratio_table import print_summary, row  # noqa: E402

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

BUCKET = "bench"
PLAIN = "usage/plain/"
GZIP = "usage/gzip/"


def record(n: int) -> bytes:
    """One ~200-byte JSON line: a CloudEvent without an id, as a billing export writes it."""
    line = (
        '{"specversion":"1.0","source":"billing-export","type":"api_calls",'
        f'"subject":"customer-{n % 997:04d}","time":"2024-05-01T12:{n % 60:02d}:00Z",'
        f'"data":{{"calls":{n % 1000},"tokens":{(n * 7919) % 100000},"model":"model-{n % 5}",'
        f'"region":"eu-west-{n % 3}","request":"r{n:010d}"}}}}'
    )
    return line.encode() + b"\n"


# --- CPU accounting ----------------------------------------------------------------------------------


# --- role: moto's server -------------------------------------------------------------------------------


def serve() -> None:
    """moto's S3 server on 127.0.0.1; prints its endpoint as one JSON line, then obeys stdin."""
    from motoserver import MotoS3

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # it logs every request otherwise
    with MotoS3() as s3:
        print(json.dumps({"endpoint": s3.endpoint}), flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps({"cpu_s": time.process_time()}), flush=True)
            elif line.strip() == "quit":
                break


class Server(LineServer):
    """moto's process: start, ask for its CPU, stop (by its PID)."""

    name = "moto's server"

    def __init__(self) -> None:
        super().__init__([sys.executable, str(Path(__file__).resolve()), "--role", "server"])
        self.endpoint: str = self.line(60, "start")["endpoint"]


class Measure:
    """Wall time, this process's CPU, moto's CPU and the machine's busy CPU, over a block."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def __enter__(self) -> Measure:
        self._busy, self._mine, self._moto = machine_cpu_seconds()[0], cpu_seconds(os.getpid()), self.server.cpu_s()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall_s = time.perf_counter() - self._t
        self.client_cpu_s = cpu_seconds(os.getpid()) - self._mine
        self.moto_cpu_s = self.server.cpu_s() - self._moto
        self.others_cpu_s = max(0.0, machine_cpu_seconds()[0] - self._busy - self.client_cpu_s - self.moto_cpu_s)

    def figures(self, records: int) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 3),
            "records_per_s": records / self.wall_s,
            "client_cpu_s": round(self.client_cpu_s, 2),
            "client_cpu_us_per_record": 1e6 * self.client_cpu_s / records,
            "moto_cpu_s": round(self.moto_cpu_s, 2),
            "moto_busy_pct": round(100 * self.moto_cpu_s / self.wall_s, 1),
            "others_cpu_pct": round(100 * self.others_cpu_s / self.wall_s, 1),
        }


# --- the objects ---------------------------------------------------------------------------------------


def client(endpoint: str) -> Any:
    from motoserver import ACCESS_KEY, REGION, SECRET_KEY, MotoS3

    s3 = MotoS3()
    s3.endpoint = endpoint
    return s3.client(aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name=REGION)


def upload(endpoint: str, objects: int, records: int) -> dict[str, Any]:
    """``objects`` JSON-lines objects of ``records`` lines each, plain and gzip (the same lines): not timed."""
    s3 = client(endpoint)
    s3.create_bucket(Bucket=BUCKET)
    sizes = {"plain": 0, "gzip": 0}

    def put(i: int) -> None:
        body = b"".join(record(i * records + n) for n in range(records))
        packed = gzip.compress(body, compresslevel=6)
        s3.put_object(Bucket=BUCKET, Key=f"{PLAIN}{i:05d}.jsonl", Body=body)
        s3.put_object(Bucket=BUCKET, Key=f"{GZIP}{i:05d}.jsonl.gz", Body=packed)
        sizes["plain"] += len(body)
        sizes["gzip"] += len(packed)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(objects)))
    return sizes


# --- the baseline: boto3, one object after the other ------------------------------------------------------


def baseline(endpoint: str, prefix: str) -> dict[str, Any]:
    """List ``prefix``, then get, read, (gunzip,) split and decode every object, sequentially."""
    s3 = client(endpoint)
    count, objects, subjects = 0, 0, set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
            if item["Key"].endswith(".gz"):
                body = gzip.decompress(body)
            for line in body.splitlines():
                if line:
                    subjects.add(json.loads(line)["subject"])
                    count += 1
            objects += 1
    s3.close()
    return {"records": count, "objects": objects, "subjects": len(subjects)}


# --- the collector: the s3 receiver in a pipeline ---------------------------------------------------------


async def collector(
    endpoint: str, prefix: str, queue: str, total: int, objects: int, work: Path, batch_size: int = 500
) -> dict[str, Any]:
    """From the service's start until every object is done and ``total`` records are committed."""
    import collector_plugin_s3
    from motoserver import ACCESS_KEY, REGION, SECRET_KEY

    from collector.testing.harness import run_pipeline, testing_registry

    receiver = {"bucket": BUCKET, "prefix": prefix, "endpoint_url": endpoint, "region": REGION, "path_style": True,
                "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY, "interval": "1h",
                "batch_size": batch_size}  # fmt: skip
    exporter = {"queue": {"kind": queue, **({"durability": "full"} if queue == "durable" else {})}}
    text = json.dumps({"receivers": {"s3": receiver}, "exporters": {"memory": exporter}})
    registry = testing_registry([("s3", collector_plugin_s3)])
    started = time.perf_counter()
    deadline = started + 300
    async with run_pipeline(text, work, registry=registry) as p:
        rec: Any = p.component("s3")
        start_s = time.perf_counter() - started  # the service's start: the pipeline, queues, the state store
        while rec.objects_done < objects or p.metric("collector_s3_records_total", receiver="s3") < total:
            if time.perf_counter() > deadline or rec.health().get("failing_objects") or rec.endpoint_error:
                raise SystemExit(f"the receiver did not finish: {rec.health()}")
            await asyncio.sleep(0.005)
        committed_s = time.perf_counter() - started
        sink = p.exporter()
        while len(sink.events) < total and time.perf_counter() < deadline:
            await asyncio.sleep(0.02)
        delivered_s = time.perf_counter() - started
        events = sink.events
        committed = p.metric("collector_s3_records_total", receiver="s3")
        malformed = p.metric("collector_s3_malformed_records_total", receiver="s3")
    ids = {e["id"] for e in events}
    subjects = {e["subject"] for e in events}
    return {
        "start_s": round(start_s, 3),
        "committed_s": round(committed_s, 3),
        "delivered_s": round(delivered_s, 3),
        "records": int(committed),
        "malformed": int(malformed),
        "delivered": len(events),
        "unique_ids": len(ids),
        "subjects": len(subjects),
        "objects": objects,
    }


# --- the run -------------------------------------------------------------------------------------------

RUNS = [  # name, prefix, queue
    ("collector_jsonl_memory", PLAIN, "memory"),
    ("collector_jsonl_durable", PLAIN, "durable"),
    ("collector_gzip_durable", GZIP, "durable"),
]
BASELINES = [("baseline_jsonl", PLAIN), ("baseline_gzip", GZIP)]


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    total = args.objects * args.records
    print(f"moto's S3 server; uploading {args.objects} x {args.records} records (plain, gzip) ...", file=sys.stderr,
          flush=True)  # fmt: skip
    server = Server()
    results: dict[str, Any] = {}
    try:
        t = time.perf_counter()
        sizes = upload(server.endpoint, args.objects, args.records)
        upload_s = time.perf_counter() - t
        import collector_plugin_s3.receiver  # noqa: F401  # its import (boto3's too) is not the run's cost

        with tempfile.TemporaryDirectory(prefix="bench-s3-") as tmp:
            for r in range(args.rounds):
                for name, prefix in BASELINES:
                    print(f"round {r + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
                    with Measure(server) as m:
                        base = baseline(server.endpoint, prefix)
                    if base["records"] != total:
                        raise SystemExit(f"{name}: read {base['records']} records, expected {total}")
                    _keep(results, name, {**base, **m.figures(total)})
                for name, prefix, queue in RUNS:
                    print(f"round {r + 1}/{args.rounds}: {name} ...", file=sys.stderr, flush=True)
                    work = Path(tmp) / f"{name}-{r}"  # fresh state: every object is new to this receiver
                    with Measure(server) as m:
                        col = asyncio.run(
                            collector(server.endpoint, prefix, queue, total, args.objects, work, args.batch_size)
                        )
                    m.wall_s = col["committed_s"]  # the figure is start -> every record committed
                    _keep(results, name, {**col, **m.figures(total), "queue": queue})
    finally:
        server.stop()
    for name, _, _ in RUNS:  # the figures mean something only if every record was billed once
        c = results[name]
        if c["records"] != total or c["unique_ids"] != total or c["malformed"] or c["delivered"] != total:
            raise SystemExit(f"{name}: {c} -- not every record billed exactly once; the figures are not comparable")
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "settings": {
            "objects": args.objects,
            "records_per_object": args.records,
            "records": total,
            "plain_bytes": sizes["plain"],
            "gzip_bytes": sizes["gzip"],
            "rounds": args.rounds,
            "batch_size": args.batch_size,
        },
        "upload_s": round(upload_s, 1),
        **results,
        "summary": summarise(results),
        "elapsed_s": round(time.perf_counter() - started, 1),
    }


def _keep(results: dict[str, Any], name: str, figures: dict[str, Any]) -> None:
    """Keep the fastest round of ``name``; every round's wall time stays in ``rounds_wall_s``."""
    walls = [*results.get(name, {}).get("rounds_wall_s", []), figures["wall_s"]]
    if name not in results or figures["wall_s"] < results[name]["wall_s"]:
        results[name] = figures
    results[name]["rounds_wall_s"] = walls


def summarise(r: dict[str, Any]) -> list[dict[str, Any]]:
    bj, bg = r["baseline_jsonl"], r["baseline_gzip"]
    mem, dur, gz = r["collector_jsonl_memory"], r["collector_jsonl_durable"], r["collector_gzip_durable"]
    b3 = "boto3 get+read+json.loads"
    return [
        row("JSON lines, memory queue (records/s)", mem["records_per_s"], bj["records_per_s"], b3),
        row("JSON lines, durable queue (records/s)", dur["records_per_s"], bj["records_per_s"], b3),
        row("JSON lines.gz, durable queue (records/s)", gz["records_per_s"], bg["records_per_s"], b3 + " + gunzip"),
        row("client CPU per record (us), durable", dur["client_cpu_us_per_record"], bj["client_cpu_us_per_record"], b3),
        row("moto busy (% of one core), durable", dur["moto_busy_pct"], bj["moto_busy_pct"], b3),
    ]


def print_table(r: dict[str, Any]) -> None:
    print_summary("s3 receiver", r["summary"])
    s = r["settings"]
    print(
        f"{s['objects']:,} objects x {s['records_per_object']:,} records ({s['plain_bytes'] / 2**20:.1f} MiB plain, "
        f"{s['gzip_bytes'] / 2**20:.1f} MiB gzip), batches of {s['batch_size']}; uploaded in {r['upload_s']} s "
        f"(not timed); fastest of {s['rounds']} round(s) below."
    )
    for name in ("baseline_jsonl", "baseline_gzip", *(n for n, _, _ in RUNS)):
        x = r[name]
        noisy = "  << others were busy" if x["others_cpu_pct"] > 20 else ""
        extra = f"  (start {x['start_s']:.2f} s, delivered after {x['delivered_s']:.2f} s)" if "start_s" in x else ""
        print(
            f"{name:<24} {x['wall_s']:6.2f} s  {x['records_per_s']:>9,.0f} records/s"
            f"  client CPU {x['client_cpu_s']:.2f} s  moto CPU {x['moto_cpu_s']:.2f} s ({x['moto_busy_pct']:.0f}%)"
            f"  others {x['others_cpu_pct']:.0f}%"
            f"{extra}{noisy}"
        )
    print(f"run took {r['elapsed_s']} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--objects", type=int, default=200, help="JSON-lines objects (and as many gzip ones)")
    p.add_argument("--records", type=int, default=1000, help="records (~200 bytes) per object")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds, the fastest of each kept")
    p.add_argument("--batch-size", type=int, default=500, help="the receiver's batch_size (its default: 500)")
    p.add_argument("--quick", action="store_true", help="50 objects, 1 round (a smoke run)")
    p.add_argument("--json", type=Path, default=Path("/tmp/collector-bench/s3.json"), help="write results here")
    p.add_argument("--role", choices=("main", "server"), default="main", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "server":
        serve()
        return 0
    if args.quick:
        args.objects, args.rounds = 50, 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    results = run(args)
    print_table(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
