"""``collector map``: try a mapping or a pipeline's processors on sample input.

Input is a JSON object, a JSON array of records, or newline-delimited JSON,
from a file or stdin.  Output is one JSON line per resulting record on
stdout; problems go to stderr with the record index and, for compile errors,
the line and column inside the expression.

Exit codes: 0 all records mapped, 1 some records failed, 2 the expression or
configuration does not compile.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

from collector.errors import PermanentError


def read_records(data: bytes) -> list[Any]:
    """A JSON value (object or array) or newline-delimited JSON, as the raw HTTP intake reads it."""
    from collector.builtin.http.intake import IntakeError, parse_records

    if not data.strip():
        return []
    try:
        return parse_records(data, "application/json")
    except IntakeError as exc:
        raise ValueError(f"input: {exc.detail}") from None


def _print(record: Any) -> None:
    sys.stdout.write(orjson.dumps(record, default=str).decode() + "\n")


def run_expression(expression: str, records: list[Any], meta: dict[str, Any], registry: Any) -> int:
    from collector.mapping import MappingCompileError, compile_expression, registry_functions

    try:
        mapping = compile_expression(expression, registry_functions(registry), path="--expression")
    except MappingCompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for i, record in enumerate(records):
        try:
            result = mapping(record, meta)
        except Exception as exc:
            failed += 1
            print(f"record {i}: {type(exc).__name__}: {exc} (expression: {mapping.snippet()})", file=sys.stderr)
            continue
        if result is None:
            print(f"record {i}: dropped (the mapping returned None)", file=sys.stderr)
        else:
            _print(result)
    return 1 if failed else 0


async def run_pipeline_processors(
    loaded: Any, registry: Any, pipeline: str, records: list[Any], meta: dict[str, Any], validate: bool
) -> int:
    """Build the pipeline's processors on a throw-away storage directory and run them."""
    from collector.components import ComponentContext, Processor
    from collector.runtime.pipeline import VALIDATED, Pipeline
    from collector.telemetry import Telemetry

    pipes = loaded.raw.service.pipelines
    if pipeline not in pipes:
        print(f"error: no pipeline {pipeline!r} (have: {', '.join(pipes)})", file=sys.stderr)
        return 2
    telemetry = Telemetry()
    processors = []
    with tempfile.TemporaryDirectory(prefix="collector-map-") as tmp:
        for pid in pipes[pipeline].processors:
            cc = loaded.get("processor", pid)
            spec = registry.component("processor", cc.type)
            ctx = ComponentContext(pid, "processor", Path(tmp) / pid.replace("/", "__"), telemetry, registry)
            proc = spec.factory(ctx, cc.config)
            assert isinstance(proc, Processor)
            processors.append(proc)
        for proc in processors:
            await proc.start()
        try:
            pipe = Pipeline(pipeline, processors, [])
            run_meta = {"receiver": "collector-map", **meta}
            if not validate:
                run_meta[VALIDATED] = True
            try:
                out = await pipe.prepare(list(records), run_meta)
            except PermanentError as exc:
                for err in exc.records:
                    where = f" field {err.field!r}" if err.field else ""
                    print(f"record {err.index}{where}: {err.message}", file=sys.stderr)
                if not exc.records:
                    print(f"error: {exc.message}", file=sys.stderr)
                return 1
        finally:
            for proc in processors:
                await proc.shutdown(2.0)
    for record in out:
        _print(record)
    return 0


def run_map(args: argparse.Namespace) -> int:
    from collector.cli.main import _load_or_report, _registry

    source = args.input
    data = sys.stdin.buffer.read() if source in (None, "-") else Path(source).read_bytes()
    try:
        records = read_records(data)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        meta = orjson.loads(args.meta) if args.meta else {}
    except orjson.JSONDecodeError as exc:
        print(f"error: --meta is not JSON: {exc}", file=sys.stderr)
        return 2
    if args.expression is not None:
        return run_expression(args.expression, records, meta, _registry(args))
    found = _load_or_report(args)
    if found is None:
        return 2
    registry, loaded = found
    pipelines = list(loaded.raw.service.pipelines)
    name = args.pipeline or (pipelines[0] if len(pipelines) == 1 else None)
    if name is None:
        print(f"error: say which pipeline with --pipeline (have: {', '.join(pipelines)})", file=sys.stderr)
        return 2
    return asyncio.run(run_pipeline_processors(loaded, registry, name, records, meta, not args.no_validate))
