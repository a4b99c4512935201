"""Benchmark: the mapping processor on the access-log mapping, records/s on one core.

Baseline, in the same run: the same mapping written as a plain Python
function (what a hand-written processor would cost).  Target: >= 200,000
records/s for the processor.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

from collector.components import Batch, ComponentContext
from collector.events import stable_id
from collector.functions import parse_time
from collector.mapping import registry_functions
from collector.plugins import PluginSelection, load_registry
from collector.telemetry import Telemetry

CONFIG = Path(__file__).resolve().parents[2] / "core" / "src" / "collector" / "examples" / "access-log.yaml"
N = 200_000
BATCH = 1000


def records(n: int) -> list[dict]:
    return [
        {"timestamp": f"2026-01-01T00:{(i // 60) % 60:02d}:{i % 60:02d}Z", "method": "GET",
         "path": f"/api/{i % 50}", "user": f"customer-{i % 100}", "duration": i % 1000}
        for i in range(n)
    ]  # fmt: skip


def baseline(recs: list[dict]) -> float:
    def fn(r: dict) -> dict:
        return {"specversion": "1.0", "type": "api-call", "source": "api-gateway",
                "id": stable_id(r.get("timestamp"), r.get("method"), r.get("path"), r.get("user")),
                "time": parse_time(r.get("timestamp")), "subject": r.get("user"),
                "data": {"duration": r.get("duration"), "method": r.get("method"), "path": r.get("path")}}  # fmt: skip

    t0 = time.perf_counter()
    for i in range(0, len(recs), BATCH):
        [fn(r) for r in recs[i : i + BATCH]]
    return len(recs) / (time.perf_counter() - t0)


async def processor_rate(recs: list[dict]) -> float:
    from collector.builtin.processors.mapping import MappingConfig, MappingProcessor

    expression = yaml.safe_load(CONFIG.read_text())["processors"]["mapping/access_log"]["expression"]
    registry = load_registry(PluginSelection(disabled=True))
    with tempfile.TemporaryDirectory() as tmp:
        ctx = ComponentContext("mapping/access_log", "processor", Path(tmp), Telemetry(), registry_functions(registry))
        proc = MappingProcessor(ctx, MappingConfig(expression=expression))
        meta = {"receiver": "bench", "pipeline": "bench"}
        t0 = time.perf_counter()
        for i in range(0, len(recs), BATCH):
            chunk = recs[i : i + BATCH]
            out = await proc.process_batch(Batch(chunk, list(range(len(chunk)))), meta)
            assert len(out.events) == len(chunk)
        return len(recs) / (time.perf_counter() - t0)


def main() -> dict:
    recs = records(N)
    base = max(baseline(recs) for _ in range(3))
    rate = max(asyncio.run(processor_rate(recs)) for _ in range(3))
    result = {"mapping_records_per_s": round(rate), "baseline_python_records_per_s": round(base),
              "ratio": round(rate / base, 2), "target_records_per_s": 200_000, "met": rate >= 200_000}  # fmt: skip
    print(f"mapping processor (access-log, stable ids): {rate:,.0f} records/s on one core")
    print(f"baseline (same mapping as plain Python):    {base:,.0f} records/s  -> ratio {rate / base:.2f}")
    print(f"target >= 200,000 records/s: {'met' if result['met'] else 'NOT met'}")
    return result


if __name__ == "__main__":
    res = main()
    if "--json" in sys.argv:
        print(json.dumps(res))
